"""The trained zoo models: parity through the real from_pretrained path, and specialised routing
(a regression in training or loading shows up here)."""

from __future__ import annotations

import functools

import pytest
import torch
from transformers import AutoModelForCausalLM

from moelens import HookedMoE, collect_routing_stats
from moelens.tasks.demo import demo_texts
from moelens.zoo import ZOO_MODELS, resolve

NAMES = [f"moelens/{short}" for short in ZOO_MODELS]


@functools.cache
def zoo(name: str) -> HookedMoE:
    return HookedMoE.from_pretrained(name, dtype=torch.float32)


@pytest.mark.parametrize("name", NAMES)
def test_zoo_model_is_bit_identical_to_hf(name):
    model = zoo(name)
    hf = AutoModelForCausalLM.from_pretrained(resolve(name), dtype=torch.float32).eval()
    texts = demo_texts(limit=3)["sentiment"] + demo_texts(limit=2)["math"]
    ids, mask = model.to_tokens(texts, return_mask=True)
    with torch.inference_mode():
        reference = hf(input_ids=ids, attention_mask=mask).logits
        logits, cache = model.run_with_cache(texts)
    real = mask.bool()
    assert torch.equal(logits[real], reference[real])
    assert cache.topk_mask()[:, real].sum(-1).eq(model.cfg.top_k).all()


@pytest.mark.parametrize("name", NAMES)
def test_zoo_routing_is_specialised(name):
    model = zoo(name)
    stats = collect_routing_stats(model, demo_texts(), batch_size=16, progress=False)
    lift = stats.cwas_lift().nan_to_num(0)  # [domain moe_layer expert]
    for d, domain in enumerate(stats.domains):
        assert float(lift[d].max()) > float(lift[d].median()) + 0.05, f"{name}: no expert stands out for {domain}"
    cwas = stats.cwas().nan_to_num(0)
    sentiment, math = stats.domains.index("sentiment"), stats.domains.index("math")
    top_sentiment = set(cwas[sentiment].flatten().argsort(descending=True)[:5].tolist())
    top_math = set(cwas[math].flatten().argsort(descending=True)[:5].tolist())
    assert top_sentiment != top_math


@pytest.mark.parametrize("name", NAMES)
def test_first_order_driver_ranking_agrees_with_the_exact_sweep(name):
    from moelens import compare_effects, driver_effects

    model = zoo(name)
    texts = [t for domain in demo_texts(limit=8).values() for t in domain]
    exact = driver_effects(model, texts, method="exact", progress=False)
    estimate = driver_effects(model, texts, method="first_order", progress=False)
    agreement = compare_effects(exact, estimate, n=10)
    assert agreement.spearman >= 0.9, agreement
    assert agreement.top_overlap >= 0.8, agreement



def test_cli_stats_and_drivers_run_on_the_deep_model(tmp_path):
    """The parts of `moelens analyze --model moelens/olmoe-deep` that depend on the model's shape
    (issue #15): every (layer, expert) pair of the 8-layer, 16-expert model gets a driver effect.
    (The whole `analyze`, with triggers and mediation, is tested on the default model in test_cli.)"""
    import json

    import pandas as pd
    from typer.testing import CliRunner

    from moelens.cli import app

    for command in ("stats", "drivers"):
        result = CliRunner().invoke(app, [command, "--model", "moelens/olmoe-deep", "--limit", "2", "--out", str(tmp_path)])
        assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "routing_stats.json").read_text())
    assert set(stats["domains"]) == {"sentiment", "mmlu", "math"}
    assert (stats["moe_layers"], stats["n_experts"], stats["top_k"]) == (list(range(8)), 16, 4)
    drivers = pd.read_csv(tmp_path / "driver_effects.csv")
    assert sorted(set(drivers["layer"])) == list(range(8)) and len(drivers) == 8 * 16
    assert (drivers["effect"] >= 0).all() and drivers["effect"].max() > 0
