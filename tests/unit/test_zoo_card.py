"""The zoo cards' accuracy figures are what evaluation gives: a slice of each stated held-out split
is re-evaluated with the evaluation helpers and compared, item by item, with the per-item record in
train_log.json, and the card's figures are recomputed from that record (the full evaluation runs in
the training script; the slice keeps CI fast)."""

from __future__ import annotations

import functools
import json
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from moelens.zoo import ZOO_MODELS, resolve
from zoo_training import data as zd
from zoo_training import evaluate as ev

SLICE = 64  # a whole first batch of the card's evaluation (32 rows for sentiment, 64 for arithmetic)


def log_of(name: str) -> dict:
    return json.loads((resolve(f"moelens/{name}") / "train_log.json").read_text())


WITH_ITEMS = [n for n in ZOO_MODELS if "items" in log_of(n)["sentiment_sst2_validation"]]


@functools.cache
def loaded(name: str):
    path = resolve(f"moelens/{name}")
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


@functools.cache
def hooked(name: str):
    from moelens import HookedMoE

    return HookedMoE.from_pretrained(f"moelens/{name}", dtype=torch.float32)


def test_a_zoo_model_records_per_item_results():
    assert "olmoe-deep" in WITH_ITEMS


@pytest.mark.parametrize("name", sorted(ZOO_MODELS))
def test_card_shows_the_logged_figures(name):
    log = log_of(name)
    card = (resolve(f"moelens/{name}") / "README.md").read_text()
    for key in ("sentiment_sst2_validation", "arithmetic_heldout_exact_match"):
        m = log[key]
        assert f"{m['accuracy']:.3f}" in card and f"{m['ci95'][0]:.3f}" in card, key
        if "items" in m:  # the figure is the record's, and the CI is Wilson's
            assert len(m["items"]) == m["n"] and m["items"].count("1") == m["correct"]
            assert m["ci95"] == pytest.approx(list(ev.wilson_ci(m["correct"], m["n"])))


@pytest.mark.parametrize("name", WITH_ITEMS)
def test_arithmetic_figure_is_reproduced_on_a_slice(name):
    model, tok = loaded(name)
    log = log_of(name)
    split = log["args"].get("arith_split", "units")
    problems = zd.arithmetic_problems(random.Random(log["seed"] + 2), 300, heldout=True, split=split)[:SLICE]
    preds = ev.greedy_answers(model, tok, [ev.math_prompt(q) for q, _ in problems], 6)
    items = "".join("1" if p == a else "0" for p, (_, a) in zip(preds, problems, strict=True))
    assert items == log["arithmetic_heldout_exact_match"]["items"][:SLICE]
    q, a = zip(*problems, strict=True)
    assert ev.exact_match_accuracy(model, tok, q, a, 6)["correct"] == items.count("1")


@pytest.mark.needs_data("sst2/validation.jsonl")
@pytest.mark.parametrize("name", WITH_ITEMS)
def test_sst2_figure_is_reproduced_on_a_slice(name, data_dir):
    path = data_dir / "sst2" / "validation.jsonl"
    model, tok = loaded(name)
    rows = zd.read_jsonl(path)[:SLICE]
    result = ev.sentiment_accuracy(model, tok, [r["text"] for r in rows], [r["label"] for r in rows])
    lp = ev.choice_logprobs(model, tok, [ev.sentiment_prompt(r["text"]) for r in rows], list(ev.SENTIMENT_LABEL_WORDS))
    items = "".join("1" if int(p) == int(r["label"]) else "0" for p, r in zip(lp.argmax(-1).tolist(), rows, strict=True))
    assert items == log_of(name)["sentiment_sst2_validation"]["items"][:SLICE]
    assert result["correct"] == items.count("1")


def test_docs_comparison_quotes_the_logged_figures():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "zoo" / "index.md").read_text()
    for name in ZOO_MODELS:
        for key in ("sentiment_sst2_validation", "arithmetic_heldout_exact_match", "mmlu_test_accuracy"):
            m = log_of(name)[key]
            assert f"{m['accuracy']:.3f} ({m['ci95'][0]:.3f} - {m['ci95'][1]:.3f})" in page, (name, key)


@pytest.mark.needs_data("sst2/validation.jsonl")
@pytest.mark.parametrize("name", WITH_ITEMS)
def test_sst2_figure_is_reproduced_by_moelens_evaluate(name, data_dir):
    """The public evaluation path (``moelens.evaluate`` on the hooked model) gives the card's
    per-item SST-2 validation results on the first rows, so the card's figure is the library's."""
    from moelens import evaluate

    path = data_dir / "sst2" / "validation.jsonl"
    rows = [{"id": str(i), **r} for i, r in enumerate(zd.read_jsonl(path)[:SLICE])]
    result = evaluate(hooked(name), "sst2", data=rows, progress=False)
    items = "".join("1" if c else "0" for c in result.correct)
    assert result.ids == [r["id"] for r in rows]  # no row filtered or reordered
    assert items == log_of(name)["sentiment_sst2_validation"]["items"][:SLICE]


@pytest.mark.parametrize("name", WITH_ITEMS)
def test_arithmetic_figure_is_reproduced_by_moelens_evaluate(name):
    from moelens import evaluate

    log = log_of(name)
    split = log["args"].get("arith_split", "units")
    problems = zd.arithmetic_problems(random.Random(log["seed"] + 2), 300, heldout=True, split=split)[:SLICE]
    rows = [{"id": str(i), "dataset": "arithmetic", "text": q, "answer": a} for i, (q, a) in enumerate(problems)]
    result = evaluate(hooked(name), "arithmetic", data=rows, progress=False)
    items = "".join("1" if c else "0" for c in result.correct)
    assert result.ids == [r["id"] for r in rows]
    assert items == log["arithmetic_heldout_exact_match"]["items"][:SLICE]
