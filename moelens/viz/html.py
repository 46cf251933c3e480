"""The one place where text from the user or the data becomes HTML.

Everything the report and the notebook displays build goes through :func:`el` (an element whose
text children and attribute values are escaped) or :func:`escape`; only :class:`Markup` (HTML this
package built itself) passes through unchanged. A domain name, model name, token or table cell is
therefore shown as text, never parsed as markup:

>>> str(el("h3", "<script>alert(1)</script>", cls="domain"))
'<h3 class="domain">&lt;script&gt;alert(1)&lt;/script&gt;</h3>'
>>> str(el("p", "model ", el("b", '"><img onerror=x>')))
'<p>model <b>&quot;&gt;&lt;img onerror=x&gt;</b></p>'
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Iterable, Sequence

__all__ = ["SORT_SCRIPT", "Markup", "circuitsvis_text", "colour_legend", "el", "escape", "heatmap_svg", "join", "script_json", "table"]


class Markup(str):
    """HTML built by moelens itself: inserted as is by :func:`el` (any other ``str`` is escaped)."""

    __slots__ = ()


def escape(value: object) -> Markup:
    """``value`` as HTML text: Markup unchanged, anything else ``str()``-ed and escaped (quotes too).

    >>> escape('"a" < b'), escape(Markup("<b>x</b>"))
    ('&quot;a&quot; &lt; b', '<b>x</b>')
    """
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(str(value), quote=True))


def circuitsvis_text(tokens: Iterable[object]) -> list[str]:
    """Token strings escaped for circuitsvis, whose token views insert each token with
    ``innerHTML`` (so a raw ``<s>`` token would become a strike-through element and
    ``<img/src/onerror=...>`` would run); escaped, the browser shows exactly the original text.

    >>> circuitsvis_text(["<s>", " a&b"])
    ['&lt;s&gt;', ' a&amp;b']
    """
    return [html.escape(str(token), quote=False) for token in tokens]


def join(parts: Iterable[object], sep: str = "") -> Markup:
    """Concatenate escaped parts.

    >>> join(["<", Markup("<br>")])
    '&lt;<br>'
    """
    return Markup(sep.join(escape(part) for part in parts))


_VOID = frozenset({"br", "hr", "img", "input", "meta", "link", "col", "wbr"})


def el(tag: str, *children: object, cls: str | None = None, **attrs: object) -> Markup:
    """``<tag attrs>children</tag>`` with escaped text and attribute values; ``cls`` is ``class``.

    Attribute names come from this package's code (keyword names), never from data. ``None`` values
    are left out; ``True`` gives a bare attribute.

    >>> str(el("td", 0.5, title="a<b"))
    '<td title="a&lt;b">0.5</td>'
    """
    if cls is not None:
        attrs["class"] = cls
    rendered = "".join(
        f" {name.rstrip('_').replace('_', '-')}" if value is True else f' {name.rstrip("_").replace("_", "-")}="{escape(value)}"'
        for name, value in attrs.items()
        if value is not None and value is not False
    )
    if tag in _VOID:
        return Markup(f"<{tag}{rendered}>")
    return Markup(f"<{tag}{rendered}>{join(children)}</{tag}>")


def script_json(value: object) -> Markup:
    """JSON safe to put inside ``<script>``: ``<``, ``>``, ``&`` and line separators are ``\\u``-escaped,
    so a string holding ``</script>`` cannot end the script element.

    >>> str(script_json({"t": "</script><b>"}))
    '{"t": "\\\\u003c/script\\\\u003e\\\\u003cb\\\\u003e"}'
    """
    text = json.dumps(value, allow_nan=False)
    for raw, safe in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(raw, safe)
    return Markup(text)


def colour_legend(low: float, high: float, label: object, signed: bool = False) -> Markup:
    """A colour key for the circuitsvis token views (white to blue, red for negative values, as
    circuitsvis colours them), with inline styles so it shows in a notebook as in a page.

    >>> "moelens-legend" in colour_legend(0.0, 0.8, "gate weight") and "0.8" in colour_legend(0.0, 0.8, "w")
    True
    """
    ramp = "linear-gradient(to right, red, white, blue)" if signed else "linear-gradient(to right, white, blue)"
    bar = el("span", style=f"display:inline-block;width:120px;height:11px;border:1px solid #bbb;vertical-align:middle;background:{ramp}")
    return el("div", el("b", "Legend: "), label, " ", f"{low:.3g} ", bar, f" {high:.3g}", cls="moelens-legend",
              style="font:12px system-ui,sans-serif;margin:2px 0 4px")


MISSING = "\u2013"  # what a table shows for an undefined number (NaN): an en dash, never "nan"

# Columns that hold whole numbers even when pandas stores them as floats (a rank after a sort, a count).
_INTEGER_COLUMN = re.compile(r"^(rank|count|fires|n_.*|.*_count|layer|expert|token_id|texts|tokens|inputs|pairs)$")


def _cell(value: object, float_format: str, integer: bool, missing: str) -> Markup:
    if isinstance(value, float):
        if math.isnan(value):
            return el("td", MISSING, title=missing)  # no data-value: sorts as text, after the numbers
        return el("td", f"{value:.0f}" if integer else float_format.format(value), data_value=repr(value))
    return el("td", value)


def _is_integer_column(name: object, values) -> bool:
    floats = [v for v in values if isinstance(v, float) and not math.isnan(v)]
    return bool(_INTEGER_COLUMN.match(str(name))) and all(v == int(v) for v in floats)


def table(frame, float_format: str = "{:.4f}", caption: object = None, sortable: bool = True, max_rows: int | None = None,
          missing: str = "not defined for this row") -> Markup:
    """A pandas DataFrame as an escaped HTML table; ``sortable`` tables sort by a click on a header
    (see :data:`SORT_SCRIPT`). An undefined number (NaN) shows as ``–`` and the caption says why
    (``missing``); whole numbers in a rank/count/layer/expert column show as integers.

    >>> import pandas as pd
    >>> str(table(pd.DataFrame({"domain": ["<i>"], "x": [0.5]}), sortable=False))
    '<table><thead><tr><th>domain</th><th>x</th></tr></thead><tbody><tr><td>&lt;i&gt;</td><td data-value="0.5">0.5000</td></tr></tbody></table>'
    >>> page = table(pd.DataFrame({"rank": [1.0, 2.0], "lo": [float("nan"), 0.25]}), missing="one input: no interval")
    >>> ">1<" in page, "nan" in page, "– one input: no interval" in page
    (True, False, True)
    """
    shown = frame if max_rows is None else frame.head(max_rows)
    rows = [[_plain(v) for v in row] for row in shown.itertuples(index=False)]
    integer = [_is_integer_column(name, [row[i] for row in rows]) for i, name in enumerate(frame.columns)]
    has_missing = any(isinstance(v, float) and math.isnan(v) for row in rows for v in row)
    head = el("thead", el("tr", *[el("th", column, title="click to sort" if sortable else None) for column in frame.columns]))
    body = el("tbody", *[el("tr", *[_cell(v, float_format, integer[i], missing) for i, v in enumerate(row)]) for row in rows])
    note = f"{MISSING} {missing}" if has_missing else None
    pieces = [caption] if caption is not None else []
    if note is not None:
        pieces += [" (", note, ")"] if pieces else [note]
    parts = [el("caption", join(pieces))] if pieces else []
    return el("table", *parts, head, body, cls="sortable" if sortable else None)


def _plain(value: object) -> object:
    """numpy scalars as Python ones (so floats format and sort as numbers)."""
    return value.item() if hasattr(value, "item") and not isinstance(value, str) else value


def _colour(fraction: float) -> str:
    """White to dark blue; grey for NaN."""
    if math.isnan(fraction):
        return "#dddddd"
    shade = round(255 - 200 * min(max(fraction, 0.0), 1.0))
    return f"rgb({shade},{shade},255)"


def heatmap_svg(values: Sequence[Sequence[float]], row_labels: Sequence[object], title: object, cell: int = 10) -> Markup:
    """A small inline SVG heatmap (rows x columns), one ``<rect>`` per cell with a tooltip; no image
    file and no JavaScript, so it shows in any notebook and offline.

    >>> svg = heatmap_svg([[0.0, 1.0]], ["L0"], "rate")
    >>> svg.count("<rect"), "rate" in svg, 'class="legend"' in svg  # two cells and the ten steps of the legend
    (12, True, True)
    """
    finite = [v for row in values for v in row if not math.isnan(v)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    span = (high - low) or 1.0
    label_width = 34
    n_rows, n_cols = len(values), max((len(row) for row in values), default=0)
    rects = [
        el("rect", el("title", f"{row_labels[r]} expert {c}: {v:.4g}"), x=label_width + c * cell, y=14 + r * cell,
           width=cell - 1, height=cell - 1, fill=_colour((v - low) / span))
        for r, row in enumerate(values) for c, v in enumerate(row)
    ]
    labels = [el("text", row_labels[r], x=0, y=14 + r * cell + cell - 2, font_size=cell - 1) for r in range(n_rows)]
    text = f"{title} (min {low:.3g}, max {high:.3g})"
    caption = el("text", text, x=0, y=10, font_size=10)
    top = 18 + n_rows * cell  # the legend: ten steps from min to max, below the grid
    key = [el("text", f"legend: {low:.3g}", x=0, y=top + 9, font_size=9)] + [
        el("rect", x=label_width + 40 + i * 10, y=top, width=10, height=10, fill=_colour(i / 9)) for i in range(10)
    ] + [el("text", f"{high:.3g}", x=label_width + 144, y=top + 9, font_size=9)]
    legend = el("g", el("title", f"colour scale: {low:.4g} (white) to {high:.4g} (blue); grey: undefined"), *key, cls="legend")
    # SVG clips at its width: make room for the caption (at most ~0.62 em per character of a sans-serif font)
    width, height = max(label_width + n_cols * cell + 2, label_width + 190, math.ceil(len(text) * 6.2) + 4), top + 14
    return el("svg", caption, *labels, *rects, legend, xmlns="http://www.w3.org/2000/svg", width=max(width, 240), height=height, role="img")


# Sorts a table.sortable by the clicked column (numbers by value, text alphabetically); click
# again to reverse. Plain DOM code, no library, no network.
SORT_SCRIPT = Markup("""<script>
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("thead th").forEach(function (th, column) {
    th.style.cursor = "pointer";
    th.addEventListener("click", function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var ascending = th.getAttribute("data-sort") !== "ascending";
      table.querySelectorAll("thead th").forEach(function (other) { other.removeAttribute("data-sort"); });
      th.setAttribute("data-sort", ascending ? "ascending" : "descending");
      function key(row) {
        var cell = row.cells[column], raw = cell.getAttribute("data-value");
        var number = parseFloat(raw !== null ? raw : cell.textContent);
        return isNaN(number) ? cell.textContent : number;
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        var order = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
</script>""")
