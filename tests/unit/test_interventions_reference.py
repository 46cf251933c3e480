"""Perturbed routing computed by hand, in plain torch, for one model per scoring rule."""

from __future__ import annotations

import math

import pytest
import torch

from moelens import Ablate, InterventionError, Perturb, Scale

from ..models import token_batch, wrapped


def _cached(model, ids, layer, interventions=()):
    names = [f"blocks.{layer}.moe.{s}" for s in ("hook_router_logits", "hook_topk_indices", "hook_topk_weights")]
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, names_filter=names, fwd_hooks=list(interventions))
    return [cache[n].reshape(-1, cache[n].shape[-1]) for n in names]


def _dense(index, weights, n):
    return torch.zeros(index.shape[0], n).scatter(1, index, weights.float())


def softmax_renorm_by_hand(logits, k):
    probs = torch.exp(logits - logits.max(-1, keepdim=True).values)
    probs = probs / probs.sum(-1, keepdim=True)
    order = probs.argsort(-1, descending=True)[:, :k]
    top = probs.gather(1, order)
    return order, top / top.sum(-1, keepdim=True)


def sigmoid_grouped_by_hand(logits, bias, k, n_group, topk_group, scale, renorm):
    out_index, out_weights = [], []
    for row in logits:
        score = 1 / (1 + torch.exp(-row))
        choice = score + bias
        per_group = choice.view(n_group, -1)
        group_score = torch.stack([g.sort(descending=True).values[:2].sum() for g in per_group])
        keep = set(group_score.argsort(descending=True)[:topk_group].tolist())
        size = len(row) // n_group
        allowed = [e for e in range(len(row)) if e // size in keep and row[e] != float("-inf")]
        chosen = sorted(allowed, key=lambda e: -choice[e].item())[:k]
        w = score[chosen]
        if renorm:
            w = w / (w.sum() + 1e-20)
        out_index.append(torch.tensor(chosen))
        out_weights.append(w * scale)
    return torch.stack(out_index), torch.stack(out_weights)


def sparsemixer_by_hand(logits, eps):
    """PhiMoE's eval routing, token by token: slot 1 is the arg-max, weighted by a softmax over the
    experts within 2*eps (relative) of it; slot 2 repeats this with slot 1 removed."""
    out_index, out_weights = [], []
    for row in logits.tolist():
        chosen, weights, removed = [], [], set()
        for _ in range(2):
            candidates = [e for e in range(len(row)) if e not in removed]
            best = max(candidates, key=lambda e: row[e])
            top = row[best]
            near = [e for e in candidates if (top - row[e]) / max(abs(row[e]), top) <= 2 * eps]
            total = sum(math.exp(row[e] - top) for e in near)
            chosen.append(best)
            weights.append(1.0 / total)
            removed.add(best)
        out_index.append(chosen)
        out_weights.append(weights)
    return torch.tensor(out_index), torch.tensor(out_weights)


def topk_softmax_by_hand(logits, k):
    order = logits.argsort(-1, descending=True)[:, :k]
    top = logits.gather(1, order)
    return order, torch.softmax(top, -1)


@pytest.mark.parametrize("intervention", ["perturb", "scale", "ablate"])
@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3", "gpt_oss", "phimoe"])
def test_perturbed_routing_matches_a_hand_computation(family, intervention):
    model = wrapped(family)
    layer, expert = model.cfg.moe_layers[0], 1
    ids = token_batch(11)
    clean_logits, _, _ = _cached(model, ids, layer)
    edit = {"perturb": Perturb(layer, expert, magnitude=2.5, sign=1), "scale": Scale(layer, expert, factor=1.2), "ablate": Ablate(layer, expert)}[intervention]
    logits, index, weights = _cached(model, ids, layer, [edit])
    expected_logits = clean_logits.clone()
    if intervention == "perturb":
        expected_logits[:, expert] += 2.5
    elif intervention == "scale":
        expected_logits[:, expert] *= 1.2
    else:
        expected_logits[:, expert] = float("-inf")
    assert torch.equal(logits, expected_logits)
    k, n = model.cfg.top_k, model.cfg.n_experts
    if family == "mixtral":
        exp_index, exp_weights = softmax_renorm_by_hand(expected_logits, k)
    elif family == "gpt_oss":
        exp_index, exp_weights = topk_softmax_by_hand(expected_logits, k)
    elif family == "phimoe":
        exp_index, exp_weights = sparsemixer_by_hand(expected_logits, model.layers[layer].mlp.router.router_jitter_noise)
    else:
        router = model.layers[layer].mlp.gate
        exp_index, exp_weights = sigmoid_grouped_by_hand(
            expected_logits, router.e_score_correction_bias, k, router.num_group, router.topk_group, router.routed_scaling_factor, router.norm_topk_prob
        )
    torch.testing.assert_close(_dense(index, weights, n), _dense(exp_index, exp_weights, n), rtol=1e-5, atol=1e-6)


def test_scale_weights_and_ablate_zero_edit_only_the_target_slots():
    model = wrapped("qwen2_moe")
    layer, expert = 0, 2
    ids = token_batch(12)
    _, index, clean_weights = _cached(model, ids, layer)
    _, index2, scaled = _cached(model, ids, layer, [Scale(layer, expert, factor=0.5, on="weights")])
    _, index3, zeroed = _cached(model, ids, layer, [Ablate(layer, expert, mode="zero")])
    assert torch.equal(index, index2) and torch.equal(index, index3)
    hit = index == expert
    assert hit.any()
    assert torch.equal(scaled[hit], clean_weights[hit] * 0.5) and torch.equal(scaled[~hit], clean_weights[~hit])
    assert bool((zeroed[hit] == 0).all()) and torch.equal(zeroed[~hit], clean_weights[~hit])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Perturb(0, 1, magnitude=float("nan")), "finite"),
        (lambda: Scale(0, 1, factor=float("inf")), "finite"),
        (lambda: Perturb(0, 1, sign=2), "sign"),
        (lambda: Ablate(0, 1, mode="delete"), "mode"),
        (lambda: Scale(0, 1, on="probs"), "on="),
        (lambda: Perturb("some", 1), "layers"),
        (lambda: Perturb(0, torch.tensor([[1]])), "LongTensor"),
    ],
)
def test_invalid_interventions_fail_at_construction(make, message):
    with pytest.raises(InterventionError, match=message):
        make()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (Perturb(5, 1), r"not an MoE layer of this model; MoE layers are \[1, 2\]"),
        (Perturb(1, 8), r"expert 8 is out of range; this model has experts 0..7"),
        (Perturb(1, 1, positions=40), r"position 40 is outside the sequence; valid positions are 0..5"),
        (Perturb(1, torch.tensor([0, 1, 2])), "experts has 3 entries but the batch has 2 rows"),
        (Ablate(1, list(range(7))), "needs at least 2"),
    ],
)
def test_invalid_targets_fail_at_first_use_naming_the_valid_range(edit, message):
    model = wrapped("deepseek_v3")
    with pytest.raises(InterventionError, match=message):
        model.run_with_interventions(token_batch(0), [edit])
