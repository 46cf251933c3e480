"""One rule for an output folder that several CLI steps write into: every table and report section in
it was made from the same model and data.

Each step (``stats``, ``drivers``, and ``analyze``'s summary) records a digest of its model and data
in ``steps.json``. When a step writes with another digest than a step already there, that step's
tables and sections are *stale*: they are removed (and named on the command line), so that the
report never mixes statistics of one data set with drivers or a summary of another. Rerunning the
step with the new data puts them back.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

__all__ = ["STEP_OUTPUTS", "claim"]

# What each step writes: report sections (by their title in moelens.report.SECTIONS) and files.
STEP_OUTPUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "stats": (("Domain experts", "General experts", "Routing map", "Tokens by expert"),
              ("routing_stats.safetensors", "routing_stats.json", "routing_stats.csv", "domain_experts.csv", "general_experts.csv")),
    "drivers": (("Driver experts", "Driver effects per layer (robust)", "Token triggers of driver experts",
                 "Mediation through routing", "Domain experts vs driver experts"),
                ("driver_effects.safetensors", "driver_effects.json", "driver_effects.csv")),
    "summary": (("Summary",), ("run.json",)),
}


def digest(model_name: str, data: dict[str, Any]) -> str:
    """A short digest of the model name and the texts of every domain.

    >>> digest("m", {"a": ["x"]}) == digest("m", {"a": ["x"]}) != digest("m", {"a": ["y"]})
    True
    """
    payload = json.dumps({"model": model_name, "data": {k: list(map(str, v)) for k, v in data.items()}}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def claim(out: Path, step: str, model_name: str, data: dict[str, Any]) -> list[str]:
    """Record that ``step`` writes into ``out`` from ``model_name`` and ``data``; remove the outputs of
    steps made from other model or data, and return their names (for one line on the command line).

    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp())
    >>> claim(out, "drivers", "m", {"a": ["x"]})
    []
    >>> _ = (out / "driver_effects.csv").write_text("old")
    >>> claim(out, "stats", "m", {"a": ["other"]}), (out / "driver_effects.csv").exists()
    (['drivers'], False)
    """
    from .report import section_slug

    manifest = out / "steps.json"
    try:
        steps = json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else {}
    except ValueError:
        steps = {}  # damaged: every earlier step counts as stale below
    steps = steps if isinstance(steps, dict) else {}
    key = digest(model_name, data)
    stale = [name for name, other in steps.items() if name != step and other != key and name in STEP_OUTPUTS]
    if not manifest.is_file() and any((out / "sections").glob("*.html")):  # a folder from before steps.json
        stale = [name for name in STEP_OUTPUTS if name != step]
    for name in stale:
        titles, files = STEP_OUTPUTS[name]
        slugs = {section_slug(title) for title in titles}
        for section in (out / "sections").glob("*.html"):
            if re.sub(r"^\d+-", "", section.stem) in slugs:  # the fragment's name after its order prefix
                section.unlink()
        for file in files:
            (out / file).unlink(missing_ok=True)
        steps.pop(name, None)
    steps[step] = key
    manifest.write_text(json.dumps(steps, indent=2) + "\n", encoding="utf-8")
    return [name for name in stale if name in STEP_OUTPUTS]
