"""The demo texts shipped with the package (written by the project, one domain per file).

>>> sorted(demo_texts())
['math', 'mmlu', 'sentiment']
>>> demo_texts(limit=2)["math"][0].startswith("Question:")
True
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEMO_DIR", "demo_texts"]

DEMO_DIR = Path(__file__).resolve().parents[1] / "data" / "demo"


def demo_texts(limit: int | None = None) -> dict[str, list[str]]:
    """``{domain: texts}`` from ``moelens/data/demo/*.txt`` (a literal ``\\n`` in a line is a newline)."""
    texts = {}
    for path in sorted(DEMO_DIR.glob("*.txt")):
        lines = [line.rstrip("\n").replace("\\n", "\n") for line in path.read_text(encoding="utf-8").splitlines()]
        texts[path.stem] = [line for line in lines if line.strip()][:limit]
    return texts
