"""Task evaluation and the re-weighting study take NNsightMoE through the backend protocol and give
HookedMoE's per-example predictions and scores exactly, with and without interventions; one trace
per batch (per generated token for free answers); the study refuses what needs backward passes."""

from __future__ import annotations

import warnings

import pytest
import torch

import moelens
from moelens import Ablate, HookedMoE, Scale
from moelens.errors import InvalidInputError
from moelens.testing import tiny_model

from .conftest import tokenizer

SST2 = [  # an SST-2-like slice, inline: no shared data needed
    ("a gem of a film .", 1), ("dull and lifeless .", 0), ("i loved every minute", 1), ("a total mess .", 0),
    ("funny , warm and wise .", 1), ("it never comes alive .", 0), ("the cast is superb .", 1), ("boring .", 0),
    ("a thoughtful , moving drama", 1), ("too long and too loud", 0), ("pure joy", 1), ("flat , stale and tired", 0),
]
RECORDS = [{"id": f"s{i}", "dataset": "sst2", "text": t, "label": y} for i, (t, y) in enumerate(SST2)]


def _pair(source: str):
    """``(HookedMoE, NNsightMoE)`` wrapping the *same* HF model (zoo model, or a random tiny one)."""
    from moelens.backends.nnsight import NNsightMoE

    if source.startswith("moelens/"):
        hooked = HookedMoE.from_pretrained(source, dtype=torch.float32)
    else:
        hooked = HookedMoE.from_hf(tiny_model(source, vocab_size=len(tokenizer())), tokenizer())
    return hooked, NNsightMoE.from_hf(hooked.hf_model, tokenizer=hooked.tokenizer)


@pytest.fixture(scope="module", params=["moelens/mixtral-tiny", "deepseek_v3"])
def pair(request):
    return _pair(request.param)


def _interventions(model):
    return {"none": None, "scale": [Scale(model.cfg.moe_layers[-1], [0, 1], factor=1.5)], "ablate": [Ablate("all", [0])]}


@pytest.mark.parametrize("name", ["none", "scale", "ablate"])
def test_choice_task_is_identical_through_both_backends(pair, name):
    hooked, nns = pair
    interventions = _interventions(hooked)[name]
    ref = moelens.evaluate(hooked, "sst2", data=RECORDS, interventions=interventions, batch_size=5, progress=False)
    got = moelens.evaluate(nns, "sst2", data=RECORDS, interventions=interventions, batch_size=5, progress=False)
    assert torch.equal(got.scores, ref.scores) and got.predictions == ref.predictions
    assert got.ids == ref.ids and (got.correct == ref.correct).all() and got.interventions == ref.interventions
    if interventions is not None:  # the intervention reaches the scores: the comparison can fail
        base = moelens.evaluate(nns, "sst2", data=RECORDS, batch_size=5, progress=False)
        assert not torch.equal(base.scores, got.scores)


def test_multi_token_choices_are_identical_through_both_backends(pair):
    """SST-5's label words take 1 to 3 tokens: one row per (prompt, label word), several positions each."""
    hooked, nns = pair
    records = [{**r, "dataset": "sst5", "label": (i * 3) % 5} for i, r in enumerate(RECORDS[:5])]
    kwargs = dict(data=records, interventions=[Ablate("all", [0])], batch_size=7, progress=False)
    ref = moelens.evaluate(hooked, "sst5", **kwargs)
    got = moelens.evaluate(nns, "sst5", **kwargs)
    assert ref.scores.shape == (5, 5) and torch.equal(got.scores, ref.scores) and got.predictions == ref.predictions


def test_logits_at_selects_inside_the_trace():
    hooked, nns = _pair("qwen2_moe")
    ids = torch.randint(3, 97, (3, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[2, 4:] = 0
    positions = torch.tensor([[5, 0], [2, 2], [3, 1]])
    cut = [Scale("all", [1], factor=0.5)]
    full = hooked.run_with_interventions(ids, cut, attention_mask=mask)
    got = nns.logits_at(ids, positions, cut, attention_mask=mask)
    assert got.shape == (3, 2, hooked.cfg.d_vocab)
    assert torch.equal(got, full[torch.arange(3).unsqueeze(1), positions])
    assert not torch.equal(got, nns.logits_at(ids, positions, attention_mask=mask))  # the intervention applies
    for bad in (torch.tensor([[6]] * 3), torch.tensor([[-1]] * 3), torch.tensor([[1]] * 2), torch.tensor([1, 2, 3]), [[1]] * 3,
                torch.tensor([[1.0]] * 3)):
        with pytest.raises(InvalidInputError, match="positions must be a LongTensor"):
            nns.logits_at(ids, bad)


@pytest.mark.parametrize("name", ["none", "ablate"])
def test_free_answer_task_is_identical_through_both_backends(pair, name):
    hooked, nns = pair
    interventions = _interventions(hooked)[name]
    kwargs = dict(limit=10, interventions=interventions, batch_size=4, progress=False)
    ref = moelens.evaluate(hooked, "arithmetic", **kwargs)
    got = moelens.evaluate(nns, "arithmetic", **kwargs)
    assert got.outputs == ref.outputs and got.predictions == ref.predictions and (got.correct == ref.correct).all()
    assert any(ref.outputs)  # something was generated


def test_zoo_model_keeps_its_accuracy_and_the_ablation_changes_it():
    """On the trained zoo model the scores mean something: nnsight sees the same accuracy, and an
    ablation of expert 0 everywhere moves at least one score by more than rounding."""
    hooked, nns = _pair("moelens/mixtral-tiny")
    base = moelens.evaluate(nns, "sst2", data=RECORDS, progress=False)
    cut = moelens.evaluate(nns, "sst2", data=RECORDS, interventions=[Ablate("all", [0])], progress=False)
    assert base.accuracy == moelens.evaluate(hooked, "sst2", data=RECORDS, progress=False).accuracy >= 0.75
    assert float((base.scores - cut.scores).abs().max()) > 1e-3


def test_one_trace_per_batch_and_per_generated_token(monkeypatch):
    import moelens.backends.nnsight as backend

    _, nns = _pair("mixtral")
    calls = []
    real = backend._traced
    monkeypatch.setattr(backend, "_traced", lambda *args: calls.append(args[4].shape[0]) or real(*args))
    moelens.evaluate(nns, "sst2", data=RECORDS, interventions=[Ablate(0, 1)], batch_size=5, progress=False)
    assert calls == [5, 5, 2]  # 12 single-token-label prompts in batches of 5
    calls.clear()
    res = moelens.evaluate(nns, "arithmetic", limit=6, batch_size=4, progress=False)
    steps = moelens.tasks.get_task("arithmetic").max_new_tokens
    assert set(calls) == {4, 2} and len(calls) <= 2 * steps and res.n == 6


def test_study_through_nnsight_equals_hookedmoe():
    hooked, nns = _pair("moelens/mixtral-tiny")
    select = [{**r, "id": f"sel-{i}", "text": r["text"] + " indeed"} for i, r in enumerate(RECORDS[:6])]
    kwargs = dict(select_on=select, evaluate_on=RECORDS[6:], n_experts=2, n_random=1, factors=(1.2,),
                  driver_method="exact", batch_size=8, progress=False, data_dir="/nonexistent")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no contrast data in the missing data folder: said once, demo texts used
        ref = moelens.reweighting_study(hooked, "sst2", **kwargs)
        got = moelens.reweighting_study(nns, "sst2", **kwargs)
    assert got.sets == ref.sets
    assert got.table.equals(ref.table) and len(ref.table) == 5


@pytest.mark.parametrize(("option", "value"), [("driver_method", "first_order"), ("tune_steps", 1)])
def test_study_refuses_backward_passes_through_nnsight_before_any_work(option, value, monkeypatch):
    import moelens.backends.nnsight as backend

    _, nns = _pair("mixtral")
    monkeypatch.setattr(backend, "_traced", lambda *args: pytest.fail("a trace ran before the refusal"))
    with pytest.raises(InvalidInputError, match=f"{option}={value!r}.*HookedMoE"):
        moelens.reweighting_study(nns, "sst2", select_on=RECORDS[:6], evaluate_on=RECORDS[6:], progress=False,
                                  **{option: value})


def test_the_docs_example_runs():
    """docs/nnsight.md, section "Task evaluation through nnsight": its code block runs as printed."""
    import re
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "nnsight.md").read_text(encoding="utf-8")
    section = text.split("## Task evaluation through nnsight", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "docs/nnsight.md", "exec"), {})
