"""moelens.evaluate runs through the hooked forward: interventions apply (also as a context), a
no-op intervention changes nothing, batch size does not change predictions; results round-trip."""

import numpy as np
import pytest
import torch

import moelens
from moelens import Ablate, EvalResult, HookedMoE, Scale
from zoo_training import evaluate as ev

CUT = [Ablate("all", list(range(6)))]  # 6 of 8 experts never routed to, in every MoE layer


@pytest.fixture(scope="module")
def model():
    return HookedMoE.from_pretrained("moelens/mixtral-tiny", dtype=torch.float32)


@pytest.fixture(scope="module")
def records():
    texts = ["a gem of a film .", "dull and lifeless .", "i loved every minute", "a total mess .", "funny , warm and wise .",
             "it never comes alive .", "the cast is superb .", "boring ."]
    return [{"id": f"r{i}", "dataset": "sst2", "text": t, "label": 1 - i % 2} for i, t in enumerate(texts)]


def test_interventions_change_scores_also_as_a_context(model, records):
    base = moelens.evaluate(model, "sst2", data=records, progress=False)
    cut = moelens.evaluate(model, "sst2", data=records, interventions=CUT, progress=False)
    assert not torch.allclose(base.scores, cut.scores, atol=1e-3)
    with model.intervene(CUT):
        inside = moelens.evaluate(model, "sst2", data=records, progress=False)
    assert torch.equal(inside.scores, cut.scores)
    assert cut.interventions == [i.to_dict() for i in CUT]


def test_zoo_shim_now_sees_interventions(model, records):
    """The old helpers took the bare HF model; through the shim a HookedMoE is scored hooked."""
    prompts = [ev.sentiment_prompt(r["text"]) for r in records]
    base = ev.choice_logprobs(model, model.tokenizer, prompts, list(ev.SENTIMENT_LABEL_WORDS))
    with model.intervene(CUT):
        cut = ev.choice_logprobs(model, model.tokenizer, prompts, list(ev.SENTIMENT_LABEL_WORDS))
    assert not torch.allclose(base, cut, atol=1e-3)
    bare = ev.choice_logprobs(model.hf_model, model.tokenizer, prompts, list(ev.SENTIMENT_LABEL_WORDS))
    assert torch.allclose(bare, base, atol=1e-5)


@pytest.mark.parametrize("on", ["logits", "weights"])
def test_no_intervention_equals_scale_one(model, records, on):
    base = moelens.evaluate(model, "sst2", data=records, progress=False)
    same = moelens.evaluate(model, "sst2", data=records, interventions=[Scale("all", "all", factor=1.0, on=on)], progress=False)
    assert torch.equal(base.scores, same.scores) and base.predictions == same.predictions
    qwen = HookedMoE.from_pretrained("moelens/qwen2moe-tiny", dtype=torch.float32)  # a shared expert, no renormalisation
    assert torch.equal(moelens.evaluate(qwen, "sst2", data=records, progress=False).scores,
                       moelens.evaluate(qwen, "sst2", data=records, interventions=[Scale("all", "all", factor=1.0, on=on)],
                                        progress=False).scores)


def test_batch_size_does_not_change_predictions(model, records):
    one = moelens.evaluate(model, "sst2", data=records, batch_size=1, progress=False)
    three = moelens.evaluate(model, "sst2", data=records, batch_size=3, progress=False)
    assert one.predictions == three.predictions
    assert torch.allclose(one.scores, three.scores, atol=1e-4)
    gen_one = moelens.evaluate(model, "arithmetic", limit=4, batch_size=1, progress=False)
    gen_four = moelens.evaluate(model, "arithmetic", limit=4, batch_size=3, progress=False)
    assert gen_one.outputs == gen_four.outputs


def test_result_round_trip_and_views(model, records, tmp_path):
    res = moelens.evaluate(model, "sst2", data=records, progress=False)
    again = EvalResult.load(res.save(tmp_path / "res"))
    assert again.predictions == res.predictions and torch.equal(again.scores, res.scores)
    assert again.accuracy == res.accuracy and np.array_equal(again.correct, res.correct)
    assert repr(res).startswith("EvalResult(sst2: n=8, accuracy=") and "<table" in res._repr_html_()
    lo, hi = res.ci_bootstrap
    assert lo <= res.accuracy <= hi


@pytest.mark.needs_data("sst2/validation.jsonl", "mmlu/test.jsonl")
def test_mmlu_groups_and_the_zoo_card_figure(model, data_dir):
    res = moelens.evaluate(model, "mmlu", limit=40, progress=False)
    groups = res.by_group()
    assert groups["n"].sum() == 40 and len(groups) > 5  # evenly spaced over the subject-sorted file
    sst2 = moelens.evaluate(model, "sst2", progress=False)  # the zoo card: 0.783 on all 872 rows
    assert sst2.n == 872 and round(sst2.accuracy, 3) == 0.783


def test_bad_input_is_a_moelens_error(model, records):
    with pytest.raises(moelens.InvalidInputError, match="unknown task"):
        moelens.evaluate(model, "imdb", data=records)
    with pytest.raises(moelens.InvalidInputError, match="choices"):
        moelens.evaluate(model, "sst2", data=[{"id": "x", "text": "ok", "label": 3}], progress=False)
    with pytest.raises(moelens.InvalidInputError, match="data must be"):
        moelens.evaluate(model, "sst2", data=42)
