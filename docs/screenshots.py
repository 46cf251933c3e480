"""Regenerate the screenshots of docs/viz.md with the headless Chromium of the browser tests.

    python docs/screenshots.py            # writes docs/images/{report,routing,expert,values}.png

It runs ``moelens analyze`` on the zoo default model (4 demo texts per domain), saves the three
kinds of circuitsvis views, opens each file from file:// offline, and captures the first screen.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RENDERED = "Array.from(document.querySelectorAll('.moelens-view')).every(v => v.children.length > 0)"


def main(out: Path = ROOT / "docs" / "images") -> list[Path]:
    import torch
    from typer.testing import CliRunner

    from moelens import HookedMoE
    from moelens.cli import app
    from moelens.viz import expert_tokens, readable_tokens, routing_tokens, token_values
    from tests.browser.chromium import load

    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="moelens-shots-"))
    result = CliRunner().invoke(app, ["analyze", "--limit", "4", "--out", str(work / "report")])
    if result.exit_code != 0:
        raise SystemExit(result.output)
    model = HookedMoE.from_pretrained("moelens/mixtral-tiny", dtype=torch.float32)
    review = "Review: a warm, funny and moving film.\nSentiment: positive"
    tokens = readable_tokens(model.tokenizer, model.to_tokens(review)[0].tolist())
    pages = {
        "report": work / "report" / "report.html",
        "routing": routing_tokens(model, review).save(work / "routing.html"),
        "expert": expert_tokens(model, [review, "Question: What is 7 + 5?\nAnswer: 12", "The capital of France is Paris."],
                                layer=1, expert=5).save(work / "expert.html"),
        "values": token_values(tokens, torch.linspace(-1, 1, len(tokens)), title="Per-token values (e.g. an attribution)")
        .save(work / "values.html"),
    }
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, page in pages.items():
        report = load(page, wait_for=RENDERED, screenshot=True)
        if report.console_errors or report.network_requests:
            raise SystemExit(f"{name}: {report.console_errors} {report.network_requests}")
        path = out / f"{name}.png"
        path.write_bytes(report.screenshot)
        written.append(path)
    return written


if __name__ == "__main__":
    for path in main():
        print(path, path.stat().st_size, "bytes")
