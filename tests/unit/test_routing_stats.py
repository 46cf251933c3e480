"""RoutingStats: accumulation, exact merge, persistence, and recovery of planted experts."""

import json

import pandas as pd
import pytest
import torch

from moelens.analysis.routing_stats import RoutingStats
from moelens.metrics import routing_sums

DOMAINS = ["code", "law", "bio"]
LAYERS = (0, 2)  # layer 1 is dense: layer indices are not positions
N_EXPERTS, TOP_K = 8, 2


def routing_batch(gen, boost: int | None = None, batch: int = 3, pos: int = 5):
    """(topk_mask, scores, mask) [batch pos n_experts]; ``boost`` makes one expert dominant."""
    logits = torch.randn(batch, pos, N_EXPERTS, generator=gen)
    if boost is not None:
        logits[..., boost] += 10.0  # always selected, with a confident router
    topk = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.topk(TOP_K).indices, True)
    mask = torch.rand(batch, pos, generator=gen) < 0.8
    mask[:, 0] = True
    return topk, logits.softmax(-1), mask


def filled(seed: int, batches: int = 4, boosts=None) -> RoutingStats:
    """Stats over random routing; ``boosts[(domain, layer)]`` plants a dominant expert."""
    gen = torch.Generator().manual_seed(seed)
    stats = RoutingStats(DOMAINS, LAYERS, N_EXPERTS, TOP_K)
    for _ in range(batches):
        for domain in DOMAINS:
            for layer in LAYERS:
                boost = (boosts or {}).get((domain, layer))
                stats.accumulate(domain, layer, *routing_batch(gen, boost))
    return stats


def assert_same(a: RoutingStats, b: RoutingStats) -> None:
    assert (a.domains, a.moe_layers, a.n_experts, a.top_k) == (
        b.domains, b.moe_layers, b.n_experts, b.top_k)
    for name in ("n_tokens", "counts", "entropy_sums", "score_sums"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_accumulate_matches_routing_sums_and_shapes():
    gen = torch.Generator().manual_seed(0)
    topk, scores, mask = routing_batch(gen)
    stats = RoutingStats(DOMAINS, LAYERS, N_EXPERTS, TOP_K)
    stats.accumulate("law", 2, topk, scores, mask)
    expected = routing_sums(topk, scores, mask)
    assert stats.n_tokens.tolist() == [[0, 0], [0, int(mask.sum())], [0, 0]]
    assert torch.equal(stats.counts[1, 1], expected.counts)
    assert torch.allclose(stats.entropy[1, 1], expected.entropy, equal_nan=True)
    assert stats.activation_rate.shape == (3, 2, N_EXPERTS)
    assert stats.cwas().shape == (3, 2, N_EXPERTS)
    assert stats.domain_specificity().shape == (2, N_EXPERTS)
    assert torch.allclose(stats.activation_rate[1, 1].sum(), torch.tensor(float(TOP_K)).double())
    assert stats.activation_rate[0].isnan().all()  # no tokens seen for "code"


def test_accumulate_layers_equals_layer_by_layer():
    gen = torch.Generator().manual_seed(1)
    (t0, s0, mask), (t1, s1, _) = routing_batch(gen), routing_batch(gen)
    by_layer = RoutingStats(DOMAINS, LAYERS, N_EXPERTS, TOP_K)
    by_layer.accumulate("bio", 0, t0, s0, mask)
    by_layer.accumulate("bio", 2, t1, s1, mask)
    stacked = RoutingStats(DOMAINS, LAYERS, N_EXPERTS, TOP_K)
    stacked.accumulate_layers("bio", torch.stack([t0, t1]), torch.stack([s0, s1]), mask)
    assert_same(by_layer, stacked)


def test_merge_of_two_halves_equals_whole_exactly():
    gen = torch.Generator().manual_seed(2)
    batches = [(d, layer, routing_batch(gen)) for d in DOMAINS for layer in LAYERS] * 2
    whole = RoutingStats(DOMAINS, LAYERS, N_EXPERTS, TOP_K)
    halves = [RoutingStats(DOMAINS, LAYERS, N_EXPERTS, TOP_K) for _ in range(2)]
    half = len(batches) // 2
    for i, (domain, layer, batch) in enumerate(batches):
        whole.accumulate(domain, layer, *batch)
        halves[i >= half].accumulate(domain, layer, *batch)
    merged = halves[0].merge(halves[1])
    assert_same(merged, whole)
    assert halves[0].n_tokens.sum() < whole.n_tokens.sum()  # the halves really were partial
    pd.testing.assert_frame_equal(merged.to_frame(), whole.to_frame())


def test_merge_takes_the_union_of_domains():
    a = RoutingStats(["code"], LAYERS, N_EXPERTS, TOP_K)
    b = RoutingStats(["law", "code"], LAYERS, N_EXPERTS, TOP_K)
    gen = torch.Generator().manual_seed(3)
    a.accumulate("code", 0, *routing_batch(gen))
    b.accumulate("law", 2, *routing_batch(gen))
    merged = a.merge(b)
    assert merged.domains == ("code", "law")
    assert torch.equal(merged.counts[0], a.counts[0])
    assert torch.equal(merged.counts[1], b.counts[0])


@pytest.mark.parametrize(
    "other",
    [
        RoutingStats(DOMAINS, (0, 1), N_EXPERTS, TOP_K),
        RoutingStats(DOMAINS, LAYERS, N_EXPERTS + 1, TOP_K),
        RoutingStats(DOMAINS, LAYERS, N_EXPERTS, TOP_K + 1),
    ],
)
def test_merge_rejects_a_different_model(other):
    with pytest.raises(ValueError, match="cannot merge"):
        RoutingStats(DOMAINS, LAYERS, N_EXPERTS, TOP_K).merge(other)


@pytest.mark.parametrize("name", ["stats", "stats.safetensors"])
def test_save_load_round_trip(tmp_path, name):
    stats = filled(4, batches=2)
    written = stats.save(tmp_path / name)
    assert written == tmp_path / "stats.safetensors"
    meta = json.loads((tmp_path / "stats.json").read_text())
    assert meta["domains"] == DOMAINS and meta["moe_layers"] == list(LAYERS)
    for path in (tmp_path / "stats", written, tmp_path / "stats.json"):
        loaded = RoutingStats.load(path)
        assert_same(loaded, stats)
        pd.testing.assert_frame_equal(loaded.to_frame(), stats.to_frame())


def test_load_rejects_a_foreign_sidecar(tmp_path):
    written = filled(5, batches=1).save(tmp_path / "s")
    (tmp_path / "s.json").write_text(json.dumps({"format": "other", "version": 1}))
    with pytest.raises(ValueError, match="moelens.RoutingStats"):
        RoutingStats.load(written)
    with pytest.raises(FileNotFoundError, match="save"):
        RoutingStats.load(tmp_path / "missing")


def test_domain_experts_recovers_a_planted_expert():
    stats = filled(6, boosts={("law", 2): 5})
    top = stats.domain_experts("law", top=1)
    assert list(top.columns) == [
        "domain", "layer", "expert", "cwas", "lift", "activation_rate", "entropy"]
    assert (top.loc[0, "layer"], top.loc[0, "expert"]) == (2, 5)
    assert top.loc[0, "activation_rate"] == 1.0 and top.loc[0, "lift"] > 0.5
    every = stats.domain_experts(top=3)
    assert every["domain"].tolist() == [d for d in DOMAINS for _ in range(3)]
    assert ((every["layer"] == 2) & (every["expert"] == 5)).sum() == 1  # only law's list has it
    lifts = every[every["domain"] == "law"]["lift"].tolist()
    assert lifts == sorted(lifts, reverse=True)


def test_general_experts_recovers_an_always_on_expert():
    stats = filled(7, boosts={(d, 0): 3 for d in DOMAINS} | {("bio", 2): 6})
    top = stats.general_experts(top=3)
    assert (top.loc[0, "layer"], top.loc[0, "expert"]) == (0, 3)
    assert top.loc[0, "min_activation_rate"] == 1.0
    assert top.loc[0, "specificity"] < 0.01
    rates = top["min_activation_rate"].tolist()
    assert rates == sorted(rates, reverse=True) and rates[1] < 0.5
    assert stats.domain_specificity()[1, 6] > stats.domain_specificity()[0, 3]


def test_cwas_lift_definition():
    stats = filled(8, batches=2)
    c = stats.cwas()
    expected = c[1] - (c[0] + c[2]) / 2
    assert torch.allclose(stats.cwas_lift()[1], expected)


def test_to_frame_is_tidy():
    stats = filled(9, batches=1)
    frame = stats.to_frame()
    assert len(frame) == len(DOMAINS) * len(LAYERS) * N_EXPERTS
    assert not frame.duplicated(["domain", "layer", "expert"]).any()
    row = frame[(frame.domain == "bio") & (frame.layer == 2) & (frame.expert == 4)].iloc[0]
    assert row["count"] == stats.counts[2, 1, 4]
    assert row["cwas"] == pytest.approx(float(stats.cwas()[2, 1, 4]))


def test_errors_name_the_valid_choices():
    stats = RoutingStats(DOMAINS, LAYERS, N_EXPERTS, TOP_K)
    topk, scores, mask = routing_batch(torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"\['code', 'law', 'bio'\]"):
        stats.accumulate("math", 0, topk, scores, mask)
    with pytest.raises(ValueError, match=r"moe_layers are \[0, 2\]"):
        stats.accumulate("law", 1, topk, scores, mask)
    with pytest.raises(ValueError, match="n_experts=8"):
        stats.accumulate("law", 0, topk[..., :4], scores[..., :4], mask)


def test_repr_shows_shape_and_tokens():
    stats = filled(10, batches=1)
    text = repr(stats)
    assert "domains=['code', 'law', 'bio']" in text and "n_experts=8" in text
    assert f"'law': {int(stats.n_tokens[1].max())}" in text
