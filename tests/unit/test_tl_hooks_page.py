"""Every call of the "Hook points, cache and patching" table of docs/coming-from-transformerlens.md
runs, and the identities it states hold."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import moelens
from moelens import HookedMoE
from moelens.backends.nnsight import NNsightMoE
from moelens.testing import tiny_model

PAGE = Path(__file__).resolve().parents[2] / "docs" / "coming-from-transformerlens.md"


def _rows() -> list[tuple[str, str]]:
    text = PAGE.read_text(encoding="utf-8")
    section = text.split("## Hook points, cache and patching", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("| ") else []
        if len(cells) == 3 and not cells[0].startswith("TransformerLens") and not set(cells[0]) <= {"-"}:
            rows.append((cells[0], cells[1]))
    return rows


ROWS = _rows()


@pytest.fixture(scope="module")
def namespace():
    hf = tiny_model("mixtral")
    model = HookedMoE.from_hf(hf)
    tokens = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    corrupted_tokens = torch.tensor([[5, 6, 30, 8], [9, 10, 40, 12]])
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    from tests.backends.conftest import tokenizer

    return {
        "moelens": moelens, "torch": torch, "model": model, "tokens": tokens, "corrupted_tokens": corrupted_tokens,
        "cache": cache, "logits": logits, "metric": lambda logits: logits[:, -1, 3].mean(),
        "per_row_metric": lambda logits: logits[:, -1, 3],
        "NNsightMoE": NNsightMoE.from_hf(tiny_model("mixtral"), tokenizer=tokenizer()),
    }


def test_the_table_has_rows():
    assert len(ROWS) >= 20 and sum(moelens_cell.startswith("not offered") for _, moelens_cell in ROWS) >= 3


@pytest.mark.parametrize(("idiom", "call"), ROWS, ids=[idiom[:50] for idiom, _ in ROWS])
def test_every_moelens_call_runs(namespace, idiom, call):
    if call.startswith("not offered"):
        return
    code = re.fullmatch(r"`([^`]+)`", call)
    assert code, f"the moelens cell of {idiom!r} is neither one `call` nor 'not offered, because'"
    with torch.no_grad():
        result = eval(code.group(1), dict(namespace))  # noqa: S307 (our own docs page)
    assert result is not None
    if code.group(1).startswith("torch.equal"):
        assert result is True, f"{code.group(1)} is False"
