"""Griffe extension: makes moelens' reST-flavoured docstrings render as Markdown in the API pages.

The docstrings are written for ``help()`` and doctest, not for Markdown: bare ``>>>`` examples would
render as nested block quotes, ``Example::`` literal blocks as paragraphs, and Sphinx roles such as
``:class:`~moelens.HookedMoE``` verbatim. This extension rewrites the text that mkdocstrings renders
(the source files are untouched):

- a run of ``>>>`` / ``...`` lines and their expected output becomes a ``pycon`` fenced block;
- a paragraph ending in ``::`` followed by an indented block becomes a ``python`` fenced block;
- ``:role:`~a.b.Name``` becomes inline code (`` `Name` ``); roles are not turned into links so that
  a role pointing outside the documented API can never break the strict build.
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|obj|data|exc|py:\w+):`~?([^`]+)`")


def _role(match: re.Match) -> str:
    target = match.group(1)
    # `~a.b.Name` shows `Name`; `a.b.Name` shows the full path, as Sphinx does.
    return f"`{target.rsplit('.', 1)[-1]}`" if match.group(0).split("`")[1].startswith("~") else f"`{target}`"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def markdownify(text: str) -> str:
    """Rewrite one docstring (see the module docstring).

    >>> print(markdownify("Text.\\n\\n>>> 1 + 1\\n2"))
    Text.
    <BLANKLINE>
    ```pycon
    >>> 1 + 1
    2
    ```
    """
    lines = text.splitlines()
    out: list[str] = []
    in_fence = False
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("```"):
            in_fence = not in_fence
            out.append(line)
            i += 1
            continue
        if in_fence:
            out.append(line)
            i += 1
            continue
        if stripped.startswith(">>>"):
            pad = line[: _indent(line)]
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i][len(pad):] if lines[i].startswith(pad) else lines[i].strip())
                i += 1
            if out and out[-1].strip():
                out.append("")
            out += [f"{pad}```pycon", *(pad + b for b in block), f"{pad}```"]
            continue
        if stripped.endswith("::") and not stripped.startswith(".."):
            # reST literal block: "Text::" then a blank line then an indented block.
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j < len(lines) and _indent(lines[j]) > _indent(line):
                head = stripped[:-2].rstrip()
                if head:
                    out.append(line[: _indent(line)] + _ROLE.sub(_role, head) + ":")
                    out.append("")
                base = _indent(lines[j])
                block = []
                k = j
                while k < len(lines) and (not lines[k].strip() or _indent(lines[k]) >= base):
                    block.append(lines[k][base:])
                    k += 1
                while block and not block[-1].strip():
                    block.pop()
                pad = line[: _indent(line)]
                out += [f"{pad}```python", *(pad + b if b else "" for b in block), f"{pad}```", ""]
                i = k
                continue
        out.append(_ROLE.sub(_role, line))
        i += 1
    return "\n".join(out)


class DoctestFences(griffe.Extension):
    """Apply :func:`markdownify` to every docstring griffe loads."""

    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdownify(obj.docstring.value)
