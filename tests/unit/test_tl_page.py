"""docs/coming-from-transformerlens.md: every moelens call of its tables runs on the zoo model
(after the page's own setup block), and every row that offers nothing says why."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[2] / "docs" / "coming-from-transformerlens.md"


def _setup() -> str:
    return re.search(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.S).group(1)


HOOKS_SECTION = "## Hook points, cache and patching"  # its rows run in test_tl_hooks_page.py, with its own setup


def _rows() -> list[tuple[str, str]]:
    """(TransformerLens cell, moelens cell) of every table row but the headers, before the hooks section."""
    rows = []
    for line in PAGE.read_text(encoding="utf-8").split(HOOKS_SECTION)[0].splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) >= 2 and cells[1] not in ("moelens", "---"):
            rows.append((cells[0], cells[1]))
    return rows


ROWS = _rows()


def test_the_page_has_its_sections_and_rows():
    text = PAGE.read_text(encoding="utf-8")
    for heading in ("## Tokens", "## Running and loss", "## Generation", "## Weights", "## Config and modules",
                    "## Hook points, cache and patching"):
        assert heading in text
    assert len(ROWS) >= 35 and "Attention" in text


@pytest.fixture(scope="module")
def namespace() -> dict:
    scope: dict = {}
    exec(compile(_setup(), str(PAGE), "exec"), scope)
    return scope


@pytest.mark.parametrize(("tl", "cell"), ROWS, ids=[tl[:60] for tl, _ in ROWS])
def test_each_moelens_call_runs(tl, cell, namespace):
    if cell.startswith("not offered"):
        assert "because" in cell, f"row {tl!r} says not offered without a reason"
        return
    snippets = re.findall(r"`([^`]+)`", cell)
    assert snippets, f"row {tl!r}: the moelens cell holds no code"
    for snippet in snippets:
        exec(compile(snippet, f"{PAGE.name}: {snippet}", "exec"), dict(namespace))
