"""A self-contained HTML report built from section fragments.

Each analysis step writes its own fragment (``sections/NN-name.html``) into the output folder, and
:func:`assemble` joins whatever fragments exist into ``report.html``. Later analyses add a section
by writing one more fragment; a step that was interrupted or skipped simply has no section yet.

The page works offline: figures are embedded PNGs, formulas are plain HTML, the circuitsvis token
views share one inline copy of the circuitsvis bundle, and the tables sort by a click on a header
(a few lines of inline JavaScript). Section bodies are HTML built with :func:`moelens.viz.el`,
the one place where text from the user or the data (domain names, model name, tokens, cells) is
escaped.

>>> import tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp())
>>> write_section(out, "Summary", el("p", "hello <world>"))
PosixPath('...sections/00-summary.html')
>>> "hello &lt;world&gt;" in assemble(out).read_text()
True
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import TYPE_CHECKING

from moelens.lazy import pandas as pd

from .viz.html import Markup, el, table
from .viz.render import standalone_page

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["SECTIONS", "Markup", "assemble", "el", "figure_html", "section_slug", "table_html", "write_section"]


def section_slug(title: str) -> str:
    """The name a section's fragment file and anchor carry (after its ``NN-`` order prefix).

    >>> section_slug("Domain experts vs driver experts")
    'domain-experts-vs-driver-experts'
    """
    return re.sub(r"[^a-z0-9]+", "-", str(title).lower()).strip("-") or "section"


# The report's sections, in the order they appear: declaring a section here is all it takes to
# place it (no hand-numbered order); a title not listed goes after these.
SECTIONS = (
    "Summary",
    "Domain experts",
    "General experts",
    "Driver experts",
    "Driver effects per layer (robust)",
    "Token triggers of driver experts",
    "Mediation through routing",
    "Domain experts vs driver experts",
    "Routing map",
    "Tokens by expert",
    "Re-weighting study",
)


def write_section(out_dir: str | Path, title: str, body: str, *old: str) -> Path:
    """Write one section fragment, placed by the position of ``title`` in :data:`SECTIONS`.

    ``title`` is text (escaped); ``body`` is HTML: build it with :func:`moelens.viz.el` and the
    helpers here, which escape every string that is not :class:`~moelens.viz.Markup`. (The old
    call ``write_section(out, order, title, body)`` still works; the number is ignored.)
    """
    if isinstance(title, int) and old:  # the old signature, (out_dir, order, title, body)
        title, body = body, old[0]
    order = SECTIONS.index(title) if title in SECTIONS else len(SECTIONS)
    folder = Path(out_dir) / "sections"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{order:02d}-{section_slug(title)}.html"
    path.write_text(str(el("section", el("h2", title), Markup("\n" + str(body) + "\n"), id=section_slug(title))) + "\n", encoding="utf-8")
    return path


def assemble(out_dir: str | Path, title: str = "moelens report") -> Path:
    """Join every section fragment of ``out_dir`` into ``out_dir/report.html``."""
    out_dir = Path(out_dir)
    fragments = sorted((out_dir / "sections").glob("*.html"))
    if not fragments:
        from .errors import InvalidInputError

        raise InvalidInputError(f"{out_dir} has no report sections (sections/*.html); run `moelens analyze --out {out_dir}` first.")
    names = [re.sub(r"^\d+-", "", f.stem) for f in fragments]
    nav = el("nav", *[el("a", name.replace("-", " "), href=f"#{name}") for name in names])
    body = [Markup(_read_fragment(f)) for f in fragments]
    path = out_dir / "report.html"
    path.write_text(standalone_page(title, [el("h1", title), nav, *body]), encoding="utf-8")
    return path


def _read_fragment(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        from .errors import InvalidInputError

        raise InvalidInputError(f"report section {path} is not UTF-8 text (byte {error.object[error.start]:#04x}); it was not "
                                "written by moelens: delete it, or rerun the step that writes it.") from None


def figure_html(fig: Figure, alt: str) -> Markup:
    """A matplotlib figure as an embedded PNG."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return el("img", alt=alt, src=f"data:image/png;base64,{encoded}")


def table_html(frame: pd.DataFrame, float_format: str = "{:.4f}", caption: str | None = None,
               missing: str = "not defined for this row") -> Markup:
    """A DataFrame as an escaped HTML table with sortable columns and an optional caption; an
    undefined number shows as "–" and the caption gives ``missing`` as the reason."""
    return table(frame, float_format=float_format, caption=caption, missing=missing)
