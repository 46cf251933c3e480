"""Scoring, statistics and answer extraction against hand-computed answers: a stubbed LM with a
word-level tokenizer (the prediction is planted), and real GSM8K/MATH answer strings."""

import math
import random
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from moelens.errors import InvalidInputError
from moelens.tasks import (
    choice_logprobs,
    evaluate,
    extract_math_answer,
    extract_number,
    format_prompt,
    get_task,
    greedy_generate,
    load_jsonl,
    math_answers_match,
    mcnemar_p,
    numbers_match,
    paired_bootstrap,
    task_records,
    weighted_f1,
    wilson_ci,
)
from moelens.tasks.registry import arithmetic_problems

VOCAB = ["<pad>", "</s>", "<s>", "Review:", "Sentiment:", "Question:", "Answer:", "good", "bad", "fine", "negative", "positive", "7", "8", "\n"]


class WordTokenizer:
    """Whitespace tokenizer over VOCAB; BOS with special tokens."""

    pad_token_id, eos_token_id = 0, 1

    def __call__(self, text, add_special_tokens=True):
        ids = [VOCAB.index(w) for w in text.replace("\n", " ").split()]
        return {"input_ids": ([2] if add_special_tokens else []) + ids}

    def decode(self, ids):
        return " ".join(VOCAB[i] for i in ids)


class PlantedLM(nn.Module):
    """Next-token logits: +2 on "positive" if "good" occurred so far, else +2 on "negative"; with
    ``answer`` set, +5 on that token everywhere (greedy generation repeats it)."""

    def __init__(self, answer=None):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.tokenizer = WordTokenizer()
        self.answer = answer

    def forward(self, input_ids, attention_mask):
        batch, pos = input_ids.shape
        seen_good = (input_ids == VOCAB.index("good")).long().cumsum(-1) > 0  # [batch pos]
        logits = torch.zeros(batch, pos, len(VOCAB))
        logits[..., VOCAB.index("positive")] = 2.0 * seen_good
        logits[..., VOCAB.index("negative")] = 2.0 * ~seen_good
        if self.answer is not None:
            logits[..., VOCAB.index(self.answer)] = 5.0
        return SimpleNamespace(logits=logits)


def _records(words_and_labels):
    return [{"id": str(i), "dataset": "sst2", "text": w, "label": y} for i, (w, y) in enumerate(words_and_labels)]


def test_planted_model_gives_exact_accuracy_and_f1():
    # golds 1 1 1 0 0 0, predictions 1 1 0 0 0 0 ("fine" has no "good": predicted negative)
    records = _records([("good", 1), ("good fine", 1), ("fine", 1), ("bad", 0), ("bad fine", 0), ("fine", 0)])
    res = evaluate(PlantedLM(), "sst2", data=records, progress=False, batch_size=4)
    assert res.predictions == [1, 1, 0, 0, 0, 0]
    assert res.accuracy == pytest.approx(5 / 6)
    # class 1: P=1, R=2/3, F1=0.8; class 0: P=3/4, R=1, F1=6/7; support 3 and 3
    assert res.f1 == pytest.approx((0.8 + 6 / 7) / 2)
    assert res.ci == wilson_ci(5, 6)
    lse = math.log(math.exp(2) + len(VOCAB) - 1)
    assert res.scores[0].tolist() == pytest.approx([0 - lse, 2 - lse])  # [negative, positive]
    frame = res.to_frame()
    assert list(frame["correct"]) == [True, True, False, True, True, True] and "score_1" in frame


def test_choice_logprobs_sums_multi_token_continuations():
    model = PlantedLM()
    lp = choice_logprobs(model, ["Review: good Sentiment:"], [" positive", " positive positive", " negative"])
    lse = math.log(math.exp(2) + len(VOCAB) - 1)
    assert lp[0].tolist() == pytest.approx([2 - lse, 2 * (2 - lse), -lse])
    with pytest.raises(InvalidInputError, match="batch_size"):
        choice_logprobs(model, ["good"], [" positive"], batch_size=0)


def test_greedy_generation_and_extraction_on_a_planted_model():
    model = PlantedLM(answer="7")
    assert greedy_generate(model, ["fine", "bad"], max_new_tokens=3) == ["7 7 7", "7 7 7"]
    records = [{"id": "a", "text": "fine", "answer": "7"}, {"id": "b", "text": "bad", "answer": "8"}]
    res = evaluate(model, "arithmetic", data=records, progress=False)
    assert res.predictions == ["7", "7"] and res.correct.tolist() == [True, False]
    assert math.isnan(res.f1) and res.outputs[0].startswith("7")
    from moelens.interventions import Ablate

    with pytest.raises(InvalidInputError, match="HookedMoE"):  # a valid intervention, but a bare model cannot take it
        evaluate(model, "sst2", data=_records([("good", 1)]), interventions=[Ablate(0, 0)], progress=False)


def test_statistics_by_hand():
    assert wilson_ci(0, 0) == (0.0, 1.0)
    lo, hi = wilson_ci(50, 100)
    assert lo == pytest.approx(0.40383, abs=1e-5) and hi == pytest.approx(0.59617, abs=1e-5)
    assert weighted_f1([0, 0, 1], [0, 0, 1]) == 1.0
    # McNemar: 6 wins and 1 loss -> two-sided binomial p = 2 * P(X <= 1 | 7, 0.5) = 2 * 8/128
    a = [1] * 6 + [0] + [1] * 5
    b = [0] * 6 + [1] + [1] * 5
    assert mcnemar_p(a, b) == pytest.approx(16 / 128)
    assert mcnemar_p(a, a) == 1.0
    delta, (lo, hi), _ = paired_bootstrap(a, b)
    assert delta == pytest.approx(5 / 12) and lo <= delta <= hi
    assert paired_bootstrap(a, a) == (0.0, (0.0, 0.0), 1.0)


def test_format_prompt_falls_back_to_the_domain():
    record = {"id": "x", "dataset": "imdb", "domain": "sentiment", "text": "a gem ."}
    assert format_prompt(record) == "Review: a gem .\nSentiment:"
    with pytest.raises(InvalidInputError, match="imdb"):
        format_prompt({"id": "x", "dataset": "imdb", "text": "a gem ."})


def test_arithmetic_split_matches_the_zoo_rule():
    train = pytest.importorskip("zoo_training.train")
    if hasattr(train, "arithmetic_problems"):
        assert arithmetic_problems(random.Random(2), 300, True) == train.arithmetic_problems(random.Random(2), 300, True)
    test = task_records("arithmetic", "test")
    assert len(test) == 300 and test[0]["text"].startswith("What is")
    assert not {r["text"] for r in test} & {r["text"] for r in task_records("arithmetic", "train")}


def test_task_names_and_slices():
    assert get_task("sst5_binary").keep({"label": 2}) is False
    assert get_task("mmlu:anatomy").keep({"subject": "anatomy"})
    with pytest.raises(InvalidInputError, match="unknown task"):
        get_task("imdb")


# -- answer extraction on real answer strings ------------------------------------------------------


def _jsonl(path):
    return load_jsonl(path)


@pytest.mark.needs_data("gsm8k/test.jsonl", "gsm8k/train.jsonl")
def test_gsm8k_numbers_from_real_solutions(data_dir):
    records = _jsonl(data_dir / "gsm8k" / "test.jsonl") + _jsonl(data_dir / "gsm8k" / "train.jsonl")
    assert all(numbers_match(extract_number(r["solution"]), r["answer"]) for r in records)
    with_comma = [r for r in records if "," in r["solution"].rsplit("####", 1)[-1]]
    negative = [r for r in records if r["answer"].startswith("-")]
    assert with_comma and negative  # the hard cases are in the data and covered above
    assert extract_number(with_comma[0]["solution"]) == with_comma[0]["answer"].replace(",", "")  # gold "2,125"
    assert extract_number(negative[0]["solution"]) == negative[0]["answer"]
    # a model answer without "####": the last number, commas and $ removed
    assert extract_number("She earns $1,250.00 in total") == "1250"
    assert extract_number("the change is -3/4 of it") == "-3/4"
    assert not numbers_match(extract_number("#### 17"), "18")


@pytest.mark.needs_data("math/test.jsonl")
def test_math_boxed_answers_from_real_solutions(data_dir):
    records = _jsonl(data_dir / "math" / "test.jsonl")
    assert all(math_answers_match(extract_math_answer(r["solution"]), r["answer"]) for r in records)
    fractions = [r for r in records if "frac" in r["answer"]]
    nested = [r for r in records if r["answer"].count("{") >= 2]
    assert fractions and nested
    assert extract_math_answer(nested[0]["solution"]) == nested[0]["answer"]
    assert math_answers_match(r"\dfrac{9}{7}", r"\frac{9}{7}") and not math_answers_match("9/8", r"\frac{9}{7}")
    assert extract_math_answer("  -12\nso on") == "-12"


@pytest.mark.needs_data("sst2/validation.jsonl", "sst2/train.jsonl")
def test_few_shot_prompts_use_another_split(data_dir):
    from moelens import HookedMoE

    model = HookedMoE.from_pretrained("moelens/mixtral-tiny")
    res = evaluate(model, "sst2", split="validation[:4]", shots=2, progress=False)
    assert res.n == 4
    from moelens.tasks.evaluate import _prompts

    spec = get_task("sst2")
    prompts = _prompts(spec, task_records(spec, "validation[:2]"), 2, None, 0)
    assert prompts[0].count("Review:") == 3 and prompts[0].endswith("\nSentiment:")
    assert prompts[0].split("\n\n")[0].endswith((" negative", " positive"))
    with pytest.raises(InvalidInputError, match="shots"):
        _prompts(spec, task_records(spec, "validation[:2]"), 3, task_records(spec, "train[:2]"), 0)
