"""The screenshots of docs/viz.md, taken in headless Chromium (the browser tests' driver), offline.

It is an MkDocs hook (mkdocs.yml ``hooks:``): every docs build runs ``moelens analyze`` on the zoo
default model (4 demo texts per domain), saves the views, opens each from file://, and puts the
fresh PNGs into the site in place of the copies in docs/images/ (in memory: nothing is written to
docs/, so ``mkdocs serve`` does not rebuild in a loop). The screenshots therefore always show the
report and the views of the code being documented. Where no Chromium/Chrome is installed the build
goes on with the committed copies and logs a note (``MOELENS_SCREENSHOTS=0`` skips on purpose).

    python docs/screenshots.py            # also refresh the committed copies in docs/images/
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RENDERED = "Array.from(document.querySelectorAll('.moelens-view')).every(v => v.children.length > 0)"
NAMES = ("report", "routing_map", "routing", "expert", "values")
log = logging.getLogger("mkdocs.hooks.screenshots")


def _pages(work: Path) -> dict[str, Path]:
    """Build the report and the views into ``work``; ``{name: html file}``."""
    import torch
    from typer.testing import CliRunner

    from moelens import HookedMoE
    from moelens.cli import app
    from moelens.viz import expert_tokens, readable_tokens, routing_map, routing_tokens, token_values

    torch.manual_seed(0)
    result = CliRunner().invoke(app, ["analyze", "--limit", "4", "--out", str(work / "report")])
    if result.exit_code != 0:
        raise RuntimeError(f"moelens analyze failed: {result.output}")
    model = HookedMoE.from_pretrained("moelens/mixtral-tiny", dtype=torch.float32)
    review = "Review: a warm, funny and moving film.\nSentiment: positive"
    tokens = readable_tokens(model.tokenizer, model.to_inputs(review).input_ids[0].tolist())
    return {
        "report": work / "report" / "report.html",
        "routing_map": routing_map(model, review).save(work / "routing_map.html"),
        "routing": routing_tokens(model, review).save(work / "routing.html"),
        "expert": expert_tokens(model, [review, "Question: What is 7 + 5?\nAnswer: 12", "The capital of France is Paris."],
                                layer=1, expert=5).save(work / "expert.html"),
        "values": token_values(tokens, torch.linspace(-1, 1, len(tokens)), title="Per-token values (e.g. an attribution)")
        .save(work / "values.html"),
    }


# The routing map with an expert selected, so the screenshot shows the highlight.
_SELECT = "Object.values(window.moelensRoutingMaps || {}).forEach(m => m.select(4, null)) || true"


def render(browser: str | None = None) -> dict[str, bytes]:
    """PNG bytes of every screenshot; FileNotFoundError where no Chromium/Chrome is installed,
    RuntimeError where a page logs a JavaScript error or asks the network for anything."""
    if str(ROOT) not in sys.path:  # MkDocs restores sys.path after loading a hook: tests/ must import at call time
        sys.path.insert(0, str(ROOT))
    from tests.browser.chromium import find_browser, load

    browser = browser or find_browser()
    if browser is None:
        raise FileNotFoundError("no Chromium/Chrome found (apt-get install chromium, or set MOELENS_CHROMIUM)")
    shots = {}
    with tempfile.TemporaryDirectory(prefix="moelens-shots-") as work:
        for name, page in _pages(Path(work)).items():
            expressions = {"selected": _SELECT} if name == "routing_map" else None
            report = load(page, wait_for=RENDERED, screenshot=True, browser=browser, expressions=expressions)
            if report.console_errors or report.network_requests:
                raise RuntimeError(f"{name}: {report.console_errors} {report.network_requests}")
            shots[name] = report.screenshot
    return shots


def on_files(files, config, **kwargs):
    """MkDocs hook: replace docs/images/<name>.png in the site by a fresh screenshot."""
    from mkdocs.structure.files import File

    if os.environ.get("MOELENS_SCREENSHOTS", "1") == "0":
        log.info("screenshots: skipped (MOELENS_SCREENSHOTS=0); the site uses the committed docs/images/")
        return files
    start = time.perf_counter()
    try:
        shots = render()
    except FileNotFoundError as error:
        log.info(f"screenshots: not regenerated, {error}; the site uses the committed docs/images/")
        return files
    for name, png in shots.items():
        uri = f"images/{name}.png"
        old = files.get_file_from_path(uri)
        if old is not None:
            files.remove(old)
        files.append(File.generated(config, uri, content=png))
    log.info(f"screenshots: {len(shots)} regenerated in {time.perf_counter() - start:.1f} s")
    return files


def main(out: Path = ROOT / "docs" / "images") -> list[Path]:
    """Refresh the committed copies (the fallback of builds without Chromium)."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, png in render().items():
        path = out / f"{name}.png"
        path.write_bytes(png)
        written.append(path)
    return written


if __name__ == "__main__":
    for path in main():
        print(path, path.stat().st_size, "bytes")
