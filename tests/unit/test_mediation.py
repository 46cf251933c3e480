"""Causal mediation through routing: identities (hypothesis, several families) and the batched sweep
against a hand-written loop of single-patch forwards."""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moelens import HookedMoE, InvalidInputError
from moelens.analysis.mediation import Mediation, logit_diff, routing_mediation
from moelens.architectures import resolve
from moelens.testing import tiny_model

from ..tolerance import float_tol

# Fused-expert families with different routing rules: renormalised softmax (mixtral), softmax with
# a shared expert (qwen2_moe), sigmoid + bias + groups + scaling (deepseek_v3), plain softmax (olmoe).
FAMILIES = ["mixtral", "qwen2_moe", "deepseek_v3", "olmoe"]
METRIC_TOKENS = (3, 4)


@functools.cache
def _model(family: str) -> HookedMoE:
    # A larger init than HF's default makes the output depend visibly on the routing.
    return HookedMoE.from_hf(tiny_model(family, initializer_range=0.2))


def _pair(seed: int, n_pairs: int, length: int, n_changed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(3, 97, (n_pairs, length), generator=gen)
    corrupt = clean.clone()
    for i in range(n_pairs):
        where = torch.randperm(length, generator=gen)[:n_changed]
        corrupt[i, where] = torch.randint(3, 97, (len(where),), generator=gen)
    return clean, corrupt


def _metric(logits: torch.Tensor) -> torch.Tensor:
    a, b = METRIC_TOKENS
    return logits[:, -1, a] - logits[:, -1, b]


# -- the hand-written reference: one full forward per patch ------------------------------------------


def _gates(model: HookedMoE, ids: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    names = [f"blocks.{L}.moe.hook_topk_{s}" for L in model.cfg.moe_layers for s in ("indices", "weights")]
    _, cache = model.run_with_cache(ids, names_filter=names)
    return {L: (cache[f"blocks.{L}.moe.hook_topk_indices"], cache[f"blocks.{L}.moe.hook_topk_weights"]) for L in model.cfg.moe_layers}


def _dense(index, weights, n):
    return torch.zeros(*index.shape[:-1], n).scatter_(-1, index, weights.float())


def _single_expert_patch(model: HookedMoE, clean: torch.Tensor, corrupt: torch.Tensor, layer: int, expert: int) -> float:
    """Clean forward where expert ``expert`` of ``layer`` gets its corrupted gate at every position: the
    block output changes by (w_corrupt - w_clean) * E_e(x), E_e computed by calling HF's experts module."""
    n = model.cfg.n_experts
    w_c = _dense(*_gates(model, clean)[layer], n)[0, :, expert]  # [pos]
    w_x = _dense(*_gates(model, corrupt)[layer], n)[0, :, expert]
    block = resolve(model.layers[layer], model.spec.moe_block)
    experts = resolve(block, model.spec.experts)
    seen = {}

    def keep_in(x, hook):
        seen["x"] = x

    def add(out, hook):
        x = seen["x"][0]  # [pos d_model]
        index = torch.full((x.shape[0], 1), expert)
        unweighted = experts(x, index, torch.ones(x.shape[0], 1))  # E_e(x) [pos d_model]
        return out + ((w_x - w_c)[:, None] * unweighted)[None]

    hooks = [(f"blocks.{layer}.moe.hook_in", keep_in), (f"blocks.{layer}.moe.hook_out", add)]
    with torch.no_grad():
        patched = model.run_with_hooks(clean, hooks)
        base = model(clean)
    return float(_metric(patched) - _metric(base))


def _topk_patch(model: HookedMoE, clean, corrupt, layers, position=None) -> float:
    """Clean forward with the corrupted top-k (indices and weights) at ``layers`` (all positions, or one)."""
    corrupted = _gates(model, corrupt)
    hooks = []
    for L in layers:
        for s, value in zip(("indices", "weights"), corrupted[L], strict=True):
            def patch(x, hook, value=value):
                x = x.clone()
                sl = slice(None) if position is None else slice(position, position + 1)
                x[:, sl] = value[:, sl]
                return x

            hooks.append((f"blocks.{L}.moe.hook_topk_{s}", patch))
    with torch.no_grad():
        return float(_metric(model.run_with_hooks(clean, hooks)) - _metric(model(clean)))


# -- identities ------------------------------------------------------------------------------------

_settings = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_settings
@given(family=st.sampled_from(FAMILIES), seed=st.integers(0, 10_000), length=st.integers(2, 7))
def test_clean_equal_to_corrupted_gives_zeros(family, seed, length):
    clean, _ = _pair(seed, 2, length, 1)
    med = routing_mediation(_model(family), clean, clean, metric=_metric, progress=False)
    for tensor in (med.per_pair_total, med.per_pair_all_routing, med.per_pair_indirect, med.per_pair_by_layer,
                   med.per_pair_by_position):
        assert torch.equal(tensor, torch.zeros_like(tensor))


@_settings
@given(family=st.sampled_from(FAMILIES), seed=st.integers(0, 10_000), length=st.integers(2, 7), changed=st.integers(1, 3))
def test_batched_sweep_equals_the_single_patch_loop(family, seed, length, changed):
    model = _model(family)
    clean, corrupt = _pair(seed, 2, length, min(changed, length))
    med = routing_mediation(model, clean, corrupt, metric=_metric, progress=False, max_tokens=4 * length)
    n = model.cfg.n_experts
    for i in range(2):
        c, x = clean[i : i + 1], corrupt[i : i + 1]
        with torch.no_grad():
            total = float(_metric(model(x)) - _metric(model(c)))
        assert med.per_pair_total[i] == pytest.approx(total, abs=1e-4)
        for li, layer in enumerate(model.cfg.moe_layers):
            ref = torch.tensor([_single_expert_patch(model, c, x, layer, e) for e in range(n)], dtype=torch.float64)
            torch.testing.assert_close(med.per_pair_indirect[i, li], ref, atol=2e-4, rtol=1e-3)
            assert med.per_pair_by_layer[i, li] == pytest.approx(_topk_patch(model, c, x, [layer]), abs=2e-4, rel=1e-3)
            t = (seed + li) % length
            assert med.per_pair_by_position[i, li, t] == pytest.approx(_topk_patch(model, c, x, [layer], t), abs=2e-4, rel=1e-3)
        all_ref = _topk_patch(model, c, x, model.cfg.moe_layers)
        assert med.per_pair_all_routing[i] == pytest.approx(all_ref, abs=2e-4, rel=1e-3)
    # all routing + direct == total (per pair and on average)
    assert med.all_routing + med.direct == pytest.approx(med.total, abs=1e-12)


@_settings
@given(family=st.sampled_from(FAMILIES), seed=st.integers(0, 10_000))
def test_patching_nothing_gives_zero(family, seed):
    """An expert whose gate is the same in both runs (here: a corruption at the last position leaves
    earlier gates alone, and experts never selected anywhere) has indirect effect 0: the patched run
    computes the clean forward again, but stacked in a batch with other patches, so the metric (a
    difference of float32 logits) agrees with the clean one up to a few roundings of the logits' size."""
    model = _model(family)
    clean, corrupt = _pair(seed, 1, 5, 0)
    corrupt[0, -1] = (clean[0, -1] + 1 - 3) % 94 + 3
    med = routing_mediation(model, clean, corrupt, metric=_metric, progress=False)
    with torch.no_grad():
        tol = float_tol(model.dtype, model(clean)[:, -1], ulps=16)
    n = model.cfg.n_experts
    for li, layer in enumerate(model.cfg.moe_layers):
        same = (_dense(*_gates(model, clean)[layer], n) == _dense(*_gates(model, corrupt)[layer], n)).all(1)[0]
        assert float(torch.cat([med.per_pair_indirect[0, li][same].abs(), torch.zeros(1, dtype=torch.float64)]).max()) <= tol
        assert float(med.per_pair_by_position[0, li, :-1].abs().max()) <= tol


def test_k_plus_one_experts_are_exact_for_every_layout():
    """A patch that adds an expert to a position (k + 1 run) matches the reference even for a family
    whose block scales the experts' input (Llama-4, checked with another decomposition)."""
    model = _model("mixtral")
    clean, corrupt = _pair(7, 1, 6, 3)
    med = routing_mediation(model, clean, corrupt, metric=_metric, layers=[1], progress=False)
    g_c, g_x = (_dense(*_gates(model, ids)[1], 4)[0] for ids in (clean, corrupt))
    added = ((g_c == 0) & (g_x > 0)).any(0)  # experts that join the top-k somewhere
    assert bool(added.any())
    for e in added.nonzero()[:, 0].tolist():
        assert float(med.per_pair_indirect[0, 0, e]) == pytest.approx(_single_expert_patch(model, clean, corrupt, 1, e), abs=2e-4)


def test_subset_of_experts_and_layers_and_kl_default():
    model = _model("qwen2_moe")
    clean, corrupt = _pair(3, 2, 5, 2)
    med = routing_mediation(model, clean, corrupt, layers=[1], experts=[0, 2], progress=False)
    assert med.moe_layers == (1,) and med.settings["metric"] == "kl"
    assert torch.isnan(med.per_pair_indirect[:, 0, [1, 3]]).all() and not torch.isnan(med.per_pair_indirect[:, 0, [0, 2]]).any()
    assert med.total > 0 and (med.per_pair_total >= 0).all()  # KL from the clean distribution
    assert len(med.top(10)) == 2


def test_pairs_of_different_lengths_are_grouped():
    model = _model("mixtral")
    a, b = _pair(1, 1, 4, 1), _pair(2, 1, 6, 2)
    med = routing_mediation(model, [a[0][0], b[0][0]], [a[1][0], b[1][0]], metric=_metric, progress=False)
    one = routing_mediation(model, b[0], b[1], metric=_metric, progress=False)
    torch.testing.assert_close(med.per_pair_indirect[1], one.per_pair_indirect[0], atol=1e-5, rtol=1e-4)
    assert torch.isnan(med.per_pair_by_position[0, :, 4:]).all() and not torch.isnan(med.per_pair_by_position[1]).any()
    assert med.by_position.shape == (2, 6)


def test_result_round_trip_frame_plot(tmp_path):
    model = _model("mixtral")
    clean, corrupt = _pair(5, 2, 5, 2)
    med = routing_mediation(model, clean, corrupt, metric=_metric, progress=False)
    back = Mediation.load(med.save(tmp_path / "med"))
    for name in ("total", "all_routing", "indirect", "by_layer", "by_position"):
        assert torch.equal(getattr(back, f"per_pair_{name}").nan_to_num(-9), getattr(med, f"per_pair_{name}").nan_to_num(-9))
    assert back.settings == med.settings and back.moe_layers == med.moe_layers
    frame = med.to_frame()
    assert list(frame.columns) == ["layer", "expert", "indirect", "share", "rank"] and len(frame) == 8
    assert frame.sort_values("rank").indirect.abs().is_monotonic_decreasing
    med.plot(tmp_path / "med.png")
    assert (tmp_path / "med.png").stat().st_size > 0
    assert repr(med).startswith("Mediation(_metric, 2 pairs")


def test_bad_inputs_name_the_problem():
    model = _model("mixtral")
    with pytest.raises(InvalidInputError, match=r"pair 1: clean has 3 tokens and corrupted has 4"):
        routing_mediation(model, [torch.tensor([4, 5, 6]), torch.tensor([4, 5, 6])],
                          [torch.tensor([4, 5, 7]), torch.tensor([4, 5, 7, 8])], progress=False)
    with pytest.raises(InvalidInputError, match="clean has 2 inputs but corrupted has 1"):
        routing_mediation(model, torch.ones(2, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.long), progress=False)
    with pytest.raises(InvalidInputError, match=r"must map logits \(1, 3, 97\)"):
        routing_mediation(model, torch.tensor([[4, 5, 6]]), torch.tensor([[4, 5, 7]]), metric=lambda x: x[:, -1], progress=False)
    with pytest.raises(InvalidInputError, match="out of range"):
        routing_mediation(model, torch.tensor([[4, 5]]), torch.tensor([[4, 6]]), experts=[9], progress=False)
    with pytest.raises(InvalidInputError, match="layer 7 is not an MoE layer"):
        routing_mediation(model, torch.tensor([[4, 5]]), torch.tensor([[4, 6]]), layers=[7], progress=False)
    with pytest.raises(InvalidInputError, match="token id 200"):
        logit_diff(model, 200, 3)


def test_checkpoint_resumes_to_the_same_result(tmp_path, monkeypatch):
    import moelens.analysis.mediation.run as mediation

    model = _model("mixtral")
    clean, corrupt = _pair(9, 4, 5, 2)
    kwargs = {"metric": _metric, "progress": False, "max_tokens": 10}  # 2 pairs per group: 2 groups
    full = routing_mediation(model, clean, corrupt, **kwargs)
    calls = {"n": 0}
    real = mediation._Group

    def failing(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(mediation, "_Group", failing)
    with pytest.raises(KeyboardInterrupt):
        routing_mediation(model, clean, corrupt, checkpoint=tmp_path, **kwargs)
    runs = []

    def counting(*args, **kw):
        runs.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(mediation, "_Group", counting)
    resumed = routing_mediation(model, clean, corrupt, checkpoint=tmp_path, **kwargs)
    assert len(runs) == 1  # the first group came from the checkpoint
    assert torch.equal(resumed.per_pair_indirect, full.per_pair_indirect)
    assert torch.equal(resumed.per_pair_by_position.nan_to_num(-1), full.per_pair_by_position.nan_to_num(-1))
    # the run is finished now: a call with other arguments supersedes it (recomputed, never mixed)
    other = routing_mediation(model, clean, corrupt, checkpoint=tmp_path, metric=_metric, progress=False, max_tokens=5)
    fresh = routing_mediation(model, clean, corrupt, metric=_metric, progress=False, max_tokens=5)
    assert torch.equal(other.per_pair_indirect, fresh.per_pair_indirect)
