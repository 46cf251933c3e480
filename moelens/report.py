"""A self-contained HTML report built from section fragments.

Each analysis step writes its own fragment (``sections/NN-name.html``) into the output folder, and
:func:`assemble` joins whatever fragments exist into ``report.html``. Later analyses (token
triggers, re-weighting) add a section by writing one more fragment; a step that was interrupted or
skipped simply has no section yet. Figures are embedded as base64 PNGs, so the report is one file.

>>> import tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp())
>>> write_section(out, 10, "Summary", "<p>hello</p>")
PosixPath('...sections/10-summary.html')
>>> "hello" in assemble(out).read_text()
True
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

__all__ = ["write_section", "assemble", "figure_html", "table_html", "tokens_html"]

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; } th { background: #f3f3f3; }
img { max-width: 100%; } .note { color: #555; font-size: 0.9em; }
.tok { padding: 1px 2px; margin: 1px; border-radius: 3px; display: inline-block; font-family: monospace; }
nav a { margin-right: 1em; }
"""


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def write_section(out_dir: str | Path, order: int, title: str, body: str) -> Path:
    """Write one section fragment; ``order`` sorts sections in the report."""
    folder = Path(out_dir) / "sections"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{order:02d}-{_slug(title)}.html"
    path.write_text(f'<section id="{_slug(title)}"><h2>{html.escape(title)}</h2>\n{body}\n</section>\n', encoding="utf-8")
    return path


def assemble(out_dir: str | Path, title: str = "moelens report") -> Path:
    """Join every section fragment of ``out_dir`` into ``out_dir/report.html``."""
    out_dir = Path(out_dir)
    fragments = sorted((out_dir / "sections").glob("*.html"))
    if not fragments:
        from .errors import InvalidInputError

        raise InvalidInputError(f"{out_dir} has no report sections (sections/*.html); run `moelens analyze --out {out_dir}` first.")
    names = [re.sub(r"^\d+-", "", f.stem) for f in fragments]
    nav = " ".join(f'<a href="#{n}">{html.escape(n.replace("-", " "))}</a>' for n in names)
    body = "\n".join(f.read_text(encoding="utf-8") for f in fragments)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1><nav>{nav}</nav>\n{body}</body></html>\n"
    )
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def figure_html(fig: Figure, alt: str) -> str:
    """A matplotlib figure as an embedded PNG."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def table_html(frame: pd.DataFrame, float_format: str = "{:.4f}") -> str:
    """A DataFrame as a compact HTML table."""
    return frame.to_html(index=False, float_format=float_format.format, border=0, escape=True)


_PALETTE = [
    "#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69", "#fccde5",
    "#d9d9d9", "#bc80bd", "#ccebc5", "#ffed6f", "#a6cee3", "#b2df8a", "#fb9a99", "#cab2d6",
]


def tokens_html(tokens: Sequence[str], experts: Iterable[Sequence[int]], label: str) -> str:
    """Tokens coloured by their top-1 expert, with every selected expert in the tooltip."""
    spans = []
    for token, chosen in zip(tokens, experts):
        chosen = list(chosen)
        colour = _PALETTE[chosen[0] % len(_PALETTE)]
        tip = f"{label}: experts {', '.join(map(str, chosen))}"
        spans.append(f'<span class="tok" style="background:{colour}" title="{html.escape(tip)}">{html.escape(token)}</span>')
    return "<div>" + "".join(spans) + "</div>"
