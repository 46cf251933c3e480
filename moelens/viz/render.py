"""circuitsvis views that work offline, and standalone HTML pages holding them.

circuitsvis's own ``render`` writes the props into the page with plain ``json.dumps`` (a token
``</script>`` ends the script element) and its ``_repr_html_`` probes ``http://google.com`` before
choosing between the inline bundle and the CDN. :class:`View` is a ``circuitsvis``
``RenderedHTML`` that instead always uses the bundle shipped in the circuitsvis wheel, with props
escaped by :func:`moelens.viz.html.script_json`. A page holding several views (a saved file, the
report) carries one copy of the bundle (:func:`bundle_script`) and one small render call per view.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable
from pathlib import Path

import circuitsvis
from circuitsvis.utils.render import RenderedHTML

from .html import SORT_SCRIPT, Markup, el, escape, script_json

__all__ = ["PAGE_STYLE", "View", "bundle_script", "save_html", "standalone_page"]

BUNDLE_PATH = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"


@functools.cache
def _bundle() -> str:
    source = BUNDLE_PATH.read_text(encoding="utf-8")
    # Inside a JS string "<\/script" equals "</script", but the HTML parser no longer ends the
    # element there (circuitsvis deletes the text instead, which corrupts that string).
    return source.replace("</script", "<\\/script").replace("</SCRIPT", "<\\/SCRIPT")


def bundle_script() -> Markup:
    """The circuitsvis browser bundle as one classic ``<script>`` that defines ``CircuitsVis``
    (about 1.3 MB); put it once per page, before the views' render calls."""
    return Markup(f'<script data-moelens="circuitsvis-bundle">{_bundle()}</script>')


class View(RenderedHTML):
    """One circuitsvis element (``element`` is its React name, ``props`` its arguments).

    It renders in Jupyter (always from the inline bundle: no network), ``str(view)`` and
    ``view.local_src`` are self-contained HTML, :meth:`fragment` is the render call alone (for pages
    that load the bundle once), and :meth:`save` writes one standalone offline HTML file.

    >>> view = View("ColoredTokens", {"tokens": ["a", "</script>"], "values": [0.1, 0.9]}, "demo")
    >>> "</script>" in view.props["tokens"] and "\\\\u003c/script\\\\u003e" in view.fragment()
    True
    """

    def __init__(self, element: str, props: dict, title: str = "", legend: Markup | None = None):
        self.element = element
        self.legend = legend  # a colour key shown above the view (moelens.viz.html.colour_legend)
        self.props = {key: value for key, value in props.items() if value is not None}
        self.title = title
        self.uid = "moelens-view-" + uuid.uuid4().hex[:12]
        cdn = (
            f'<div id="{self.uid}"></div><script type="module">import {{ render, {element} }} from '
            f'"https://unpkg.com/circuitsvis@{circuitsvis.__version__}/dist/cdn/esm.js";\n'
            f'render("{self.uid}", {element}, {script_json(self.props)});</script>'
        )
        super().__init__(local_src="", cdn_src=cdn)
        self.local_src = bundle_script() + self.fragment()

    def fragment(self) -> Markup:
        """The view's element and render call; needs :func:`bundle_script` earlier on the page."""
        heading = el("div", self.title, cls="moelens-view-title") if self.title else Markup("")
        if self.legend is not None:
            heading = Markup(heading + self.legend)
        call = f'CircuitsVis.render("{self.uid}", CircuitsVis.{self.element}, {script_json(self.props)});'
        return Markup(f'{heading}<div id="{self.uid}" class="moelens-view"></div><script>{call}</script>')

    def _repr_html_(self) -> str:
        return self.local_src

    def __str__(self) -> str:
        return self.local_src

    def __repr__(self) -> str:
        return f"View({self.element}, {self.title!r})"

    def save(self, path: str | Path, title: str | None = None) -> Path:
        """Write a standalone offline HTML page with this view; returns the path."""
        return save_html(path, [self], title=title or self.title or self.element, heading=False)


PAGE_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; } th { background: #f3f3f3; }
th[data-sort=ascending]::after { content: " \\25B2"; } th[data-sort=descending]::after { content: " \\25BC"; }
caption { caption-side: top; text-align: left; color: #444; padding: 0.3em 0; }
img { max-width: 100%; } .note { color: #555; font-size: 0.9em; } .finding { margin: 0.2em 0; }
.moelens-view-title { font-weight: 600; margin-top: 1em; } nav a { margin-right: 1em; }
"""


def standalone_page(title: object, body: Iterable[object]) -> str:
    """A whole HTML page: ``body`` parts (Markup, :class:`View`, or text, which is escaped), one copy
    of the circuitsvis bundle when any view is on it, and the table-sorting script."""
    parts, has_view = [], False
    for part in body:
        if isinstance(part, View):
            parts.append(part.fragment())
            has_view = True
        elif callable(getattr(part, "fragment", None)):  # a RoutingMap: its own style and script, no bundle
            parts.append(part.fragment())
        else:
            parts.append(escape(part))
    head = bundle_script() if has_view or any("CircuitsVis.render(" in p for p in parts) else ""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{PAGE_STYLE}</style>{head}</head><body>{''.join(parts)}{SORT_SCRIPT}</body></html>\n"
    )


def save_html(path: str | Path, views: Iterable[object], title: object = "moelens", heading: bool = True) -> Path:
    """Write ``views`` (and any Markup between them) to one standalone offline HTML file.

    >>> import tempfile, pathlib
    >>> path = save_html(pathlib.Path(tempfile.mkdtemp()) / "v.html", [View("ColoredTokens", {"tokens": ["a"], "values": [1.0]})])
    >>> text = path.read_text(); text.count("data-moelens=\\"circuitsvis-bundle\\""), "unpkg" in text
    (1, False)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = [el("h1", title)] if heading else []
    path.write_text(standalone_page(title, [*head, *views]), encoding="utf-8")
    return path
