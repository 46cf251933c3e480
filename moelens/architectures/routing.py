"""Routing rules: from raw router logits to (scores, top-k weights, top-k indices).

Each function mirrors one family's router step by step (same ops, same dtypes, same order), so that
recomputing from unedited logits reproduces HF's selection and weights bit for bit; the parity tests
check exactly that. Convention shared by every rule: an expert whose logit is -inf is never selected. They run only when a hook edited the logits (re-routing) or when someone asks
for the router scores. A rule reads its parameters from the HF router module by explicit attribute
names: there are no defaults for routing semantics.

Shapes: ``logits [tokens n_experts]``; ``scores [tokens n_experts]`` is the distribution over experts
that the statistics use (fp32); ``weights``/``index`` are ``[tokens k]``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UnsupportedArchitectureError

__all__ = [
    "Routing",
    "softmax_topk_renormalise",
    "softmax_topk_renormalise_if_flag",
    "deepseek_v2_softmax_topk",
    "sigmoid_bias_group_topk",
    "topk_then_softmax",
    "sparsemixer_eval",
    "deepseek_v1_softmax_topk",
    "topk_then_sigmoid",
]


class Routing(NamedTuple):
    scores: Tensor  # [tokens n_experts], fp32: the router's distribution before top-k
    weights: Tensor  # [tokens k]
    index: Tensor  # [tokens k], int64


def softmax_topk_renormalise(logits: Tensor, router: nn.Module) -> Routing:
    """Mixtral, MiniMax: fp32 softmax -> top-k -> always renormalise; weights stay fp32.

    >>> r = nn.Module(); r.top_k = 2
    >>> out = softmax_topk_renormalise(torch.tensor([[0.0, 1.0, 2.0]]), r)
    >>> out.index.tolist(), round(out.weights.sum().item(), 6)
    ([[2, 1]], 1.0)
    """
    probs = F.softmax(logits.float(), dim=-1)
    top_value, index = torch.topk(probs, router.top_k, dim=-1)
    top_value /= top_value.sum(dim=-1, keepdim=True)
    return Routing(probs, top_value, index)


def softmax_topk_renormalise_if_flag(logits: Tensor, router: nn.Module) -> Routing:
    """Qwen2-MoE, Qwen3-MoE, OLMoE: fp32 softmax -> top-k -> renormalise iff ``norm_topk_prob``.

    The weights are cast back to the logits' dtype, as HF does.
    """
    probs = F.softmax(logits, dtype=torch.float, dim=-1)
    top_value, index = torch.topk(probs, router.top_k, dim=-1)
    if router.norm_topk_prob:
        top_value /= top_value.sum(dim=-1, keepdim=True)
    return Routing(probs, top_value.to(logits.dtype), index)


def deepseek_v2_softmax_topk(logits: Tensor, router: nn.Module) -> Routing:
    """DeepSeek-V2: fp32 softmax; greedy or group-limited top-k (group score = max, masked experts
    filled with 0.0); times ``routed_scaling_factor``; never renormalised."""
    scores = logits.softmax(dim=-1, dtype=torch.float32)
    choice = scores
    if router.topk_method == "group_limited_greedy":
        n_tokens, n_experts = scores.shape
        group_scores = scores.view(n_tokens, router.num_group, n_experts // router.num_group).max(dim=-1).values
        choice = scores.masked_fill(~_group_mask(group_scores, router.topk_group, n_experts), 0.0)
    elif router.topk_method != "greedy":
        raise UnsupportedArchitectureError(
            f"deepseek_v2 topk_method {router.topk_method!r} is not supported; supported: 'greedy', 'group_limited_greedy'."
        )
    weights, index = torch.topk(choice, k=router.top_k, dim=-1, sorted=False)
    return Routing(scores, weights * router.routed_scaling_factor, index)


def sigmoid_bias_group_topk(logits: Tensor, router: nn.Module) -> Routing:
    """DeepSeek-V3, GLM-4-MoE: sigmoid scores; ``e_score_correction_bias`` added for selection only;
    group score = sum of the top-2 biased scores; keep ``topk_group`` groups (others -inf); top-k
    (unsorted); weights = unbiased scores, renormalised (+1e-20) iff ``norm_topk_prob``; times
    ``routed_scaling_factor``."""
    scores = logits.sigmoid()
    choice = scores + router.e_score_correction_bias
    n_tokens, n_experts = scores.shape
    group_scores = choice.view(n_tokens, router.num_group, n_experts // router.num_group).topk(2, dim=-1)[0].sum(dim=-1)
    choice = choice.masked_fill(~_group_mask(group_scores, router.topk_group, n_experts), float("-inf"))
    if bool(torch.isneginf(logits).any()):
        # A logit of -inf means "never select" in every rule (Ablate uses it). Here its score is 0 and
        # the bias alone could still select it, so exclude it after the groups are chosen (the group
        # scores see it as score 0 + bias).
        choice = choice.masked_fill(torch.isneginf(logits), float("-inf"))
    index = torch.topk(choice, k=router.top_k, dim=-1, sorted=False)[1]
    weights = scores.gather(1, index)
    if router.norm_topk_prob:
        weights /= weights.sum(dim=-1, keepdim=True) + 1e-20
    return Routing(scores.float(), weights * router.routed_scaling_factor, index)


def topk_then_softmax(logits: Tensor, router: nn.Module) -> Routing:
    """GPT-OSS, GraniteMoE: top-k on the logits, then softmax over the k selected values.

    The family never forms a distribution over all experts; ``scores`` is our fp32 softmax over all
    logits (used by the statistics), which ranks experts the same way.
    """
    top_value, index = torch.topk(logits, router.top_k, dim=-1)
    weights = F.softmax(top_value, dim=1, dtype=top_value.dtype)
    return Routing(F.softmax(logits.float(), dim=-1), weights, index)


def sparsemixer_eval(logits: Tensor, router: nn.Module) -> Routing:
    """PhiMoE in eval mode: sparsemixer, top-2 hard-coded (the config's ``top_k`` is ignored).

    Slot 0 is the arg-max; its weight is the softmax over the experts within ``2 * jitter_eps``
    (relative) of it. Slot 1 repeats this with slot 0 masked out.
    """
    jitter_eps = router.router_jitter_noise
    weights, indices = [], []
    masked = logits
    for _ in range(2):
        threshold, max_index = masked.max(dim=-1, keepdim=True)
        factor = logits.abs().clamp(min=threshold)
        far = ((threshold - logits) / factor) > (2 * jitter_eps)
        gates = torch.softmax(masked.masked_fill(far, float("-inf")), dim=-1)
        weights.append(gates.gather(dim=-1, index=max_index))
        indices.append(max_index)
        masked = torch.scatter(logits, -1, max_index, float("-inf"))
    return Routing(F.softmax(logits.float(), dim=-1), torch.concat(weights, dim=-1), torch.concat(indices, dim=-1))


def deepseek_v1_softmax_topk(logits: Tensor, router: nn.Module) -> Routing:
    """DeepSeek-MoE (remote code ``MoEGate``): softmax -> greedy top-k (unsorted) -> renormalise
    (+1e-20) iff ``norm_topk_prob`` and k > 1."""
    scores = logits.softmax(dim=-1)
    weights, index = torch.topk(scores, k=router.top_k, dim=-1, sorted=False)
    if router.top_k > 1 and router.norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return Routing(scores.float(), weights, index)


def topk_then_sigmoid(logits: Tensor, router: nn.Module) -> Routing:
    """Llama-4: top-k on the logits, then a sigmoid of each selected logit (no normalisation).

    ``scores`` is our fp32 sigmoid of every logit (renormalised by the statistics).
    """
    top_value, index = torch.topk(logits, router.top_k, dim=1)
    # HF takes the sigmoid of the dense [T, E] tensor (-inf where not selected): the same op on the
    # gathered [T, k] values can differ in the last bit (vectorised vs scalar tail), so do it dense.
    dense = torch.full_like(logits, float("-inf")).scatter(-1, index, top_value)
    weights = torch.sigmoid(dense.float()).to(logits.dtype).gather(-1, index)
    return Routing(torch.sigmoid(logits.float()), weights, index)


def _group_mask(group_scores: Tensor, topk_group: int, n_experts: int) -> Tensor:
    """Bool mask [tokens n_experts] of the experts in the ``topk_group`` best groups."""
    n_tokens, n_group = group_scores.shape
    group_idx = torch.topk(group_scores, k=topk_group, dim=-1, sorted=False)[1]
    group_mask = torch.zeros_like(group_scores)
    group_mask.scatter_(1, group_idx, 1)
    # [tokens n_group] -> [tokens n_group experts_per_group] -> [tokens n_experts]
    return group_mask.unsqueeze(-1).expand(n_tokens, n_group, n_experts // n_group).reshape(n_tokens, n_experts).bool()
