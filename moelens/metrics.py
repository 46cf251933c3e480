"""Routing metrics as pure tensor functions (DESIGN.md §4).

The paper these metrics come from (arXiv 2601.10159) does not publish exact formulas; the
definitions here are **our reconstruction**, written so that each one is testable.

Token layout: every routing function takes tensors whose leading dimensions ``*batch`` are any
token layout, ``[batch pos]`` as hooks give it or flattened ``[tokens]``, followed by the expert
axis. ``mask`` (optional) has exactly the leading shape: ``True`` marks a real token, ``False``
padding. Padding never contributes, whatever junk (NaN, negatives) it holds. An integer 0/1
``attention_mask`` is accepted too. Without a mask every token counts.

Precision: per-token work runs in fp32 (fp64 if the input is fp64), so bf16/fp16 router scores
are safe; per-expert sums and the metrics derived from them are float64 (float32 on Apple MPS,
which has no float64), because a dataset loop adds up millions of tokens.

Streaming: :func:`routing_sums` returns the additive aggregates (token count, per-expert selection
count, per-expert sum of normalised entropy, per-expert sum of scores) as a :class:`RoutingSums`;
sum its fields over batches, then read ``.activation_rate``, ``.entropy`` and ``.cwas``.
"""

import math
from typing import Literal, NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from moelens.errors import InvalidInputError

__all__ = [
    "RoutingSums",
    "activation_rate",
    "cwas",
    "domain_specificity",
    "kl_divergence",
    "normalized_entropy",
    "routing_entropy",
    "routing_sums",
    "topk_mask_from_indices",
]


def _compute_dtype(x: Tensor) -> torch.dtype:
    """fp32 for half-precision and fp32 input, fp64 for fp64 input (never lower than fp32)."""
    if x.dtype.is_floating_point:
        return torch.promote_types(x.dtype, torch.float32)
    return torch.float32


def _acc_dtype(device: torch.device) -> torch.dtype:
    # MPS has no float64; everywhere else sums over many tokens deserve it.
    return torch.float32 if device.type == "mps" else torch.float64


def _shape(x: Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


def _check_mask(
    mask: Tensor | None, leading: torch.Size, device: torch.device, name: str
) -> Tensor:
    """Return a bool mask of shape ``leading`` (all True when ``mask`` is None)."""
    if mask is None:
        return torch.ones(leading, dtype=torch.bool, device=device)
    if mask.shape != leading:
        raise InvalidInputError(
            f"mask has shape {_shape(mask)} but {name} has leading shape {tuple(leading)}: "
            f"pass one mask entry per token (e.g. the attention_mask [batch pos])."
        )
    if mask.dtype.is_floating_point or mask.is_complex():
        raise InvalidInputError(
            f"mask must be bool (True = real token) or integer 0/1, got dtype {mask.dtype}."
        )
    return mask if mask.dtype == torch.bool else mask != 0


def _check_topk_mask(topk_mask: Tensor) -> None:
    if topk_mask.dtype != torch.bool or topk_mask.ndim < 1:
        raise InvalidInputError(
            f"topk_mask must be a bool tensor [*batch n_experts], got dtype {topk_mask.dtype} "
            f"shape {_shape(topk_mask)}. If you have top-k indices [*batch k], convert them with "
            f"topk_mask_from_indices(indices, n_experts)."
        )


def _check_scores(scores: Tensor, topk_mask: Tensor, mask: Tensor) -> None:
    if scores.shape != topk_mask.shape:
        raise InvalidInputError(
            f"scores has shape {_shape(scores)} but topk_mask has shape {_shape(topk_mask)}: "
            f"pass the router's scores over all experts [*batch n_experts] for the same tokens."
        )
    if not scores.dtype.is_floating_point:
        raise InvalidInputError(f"scores must be floating point, got dtype {scores.dtype}.")
    s = scores.to(_compute_dtype(scores))
    bad = ((s < 0) | ~torch.isfinite(s)).any(-1) | (s.sum(-1) <= 0)
    bad &= mask  # padding may hold anything
    if bool(bad.any()):
        where = tuple(int(i) for i in bad.nonzero()[0])
        raise InvalidInputError(
            f"scores at token {where} are not a valid score distribution (negative, non-finite, "
            f"or summing to 0): {scores[where].tolist()}. Pass router *scores* (softmax or "
            f"sigmoid outputs), not logits: e.g. scores=router_logits.softmax(-1)."
        )


def topk_mask_from_indices(
    topk_indices: Int[Tensor, "*batch k"], n_experts: int
) -> Bool[Tensor, "*batch n_experts"]:
    """Dense bool routing mask from top-k expert indices.

    >>> topk_mask_from_indices(torch.tensor([[0, 2], [1, 2]]), 3).int().tolist()
    [[1, 0, 1], [0, 1, 1]]
    """
    if topk_indices.dtype.is_floating_point or topk_indices.dtype == torch.bool:
        raise InvalidInputError(
            f"topk_indices must be an integer tensor [*batch k], got dtype {topk_indices.dtype} "
            f"shape {_shape(topk_indices)}."
        )
    if n_experts < 1 or topk_indices.ndim < 1:
        raise InvalidInputError(
            f"need n_experts >= 1 and topk_indices with a last axis k, got n_experts={n_experts}, "
            f"shape {_shape(topk_indices)}."
        )
    if topk_indices.numel() and (topk_indices.min() < 0 or topk_indices.max() >= n_experts):
        raise InvalidInputError(
            f"topk_indices must lie in [0, {n_experts}), got values in "
            f"[{int(topk_indices.min())}, {int(topk_indices.max())}]: check n_experts."
        )
    out = torch.zeros(
        *topk_indices.shape[:-1], n_experts, dtype=torch.bool, device=topk_indices.device
    )
    return out.scatter_(-1, topk_indices.long(), True)


def normalized_entropy(scores: Float[Tensor, "*batch n_experts"]) -> Float[Tensor, "*batch"]:
    """Entropy of the renormalised score distribution over experts, divided by log(n_experts).

    ``p = scores / scores.sum(-1)`` (so sigmoid scores work), ``H = -sum_e p_e log p_e / log n``,
    clamped to [0, 1] against rounding; 0 when there is a single expert.

    >>> normalized_entropy(torch.tensor([[1.0, 0.0], [0.3, 0.3]])).tolist()
    [0.0, 1.0]
    """
    p = scores.to(_compute_dtype(scores))
    p = p / p.sum(-1, keepdim=True)
    h = -torch.special.xlogy(p, p).sum(-1)  # xlogy: 0 * log 0 = 0
    n = scores.shape[-1]
    if n == 1:
        return torch.zeros_like(h)
    return (h / math.log(n)).clamp(0.0, 1.0) + 0.0  # + 0.0 turns -0.0 into 0.0


class RoutingSums(NamedTuple):
    """Additive routing aggregates; sum each field over batches to stream over a dataset.

    Leading ``*group`` dims are free (``RoutingStats`` keeps ``[domain moe_layer]``).
    ``n_tokens`` counts non-padding tokens, ``counts[e]`` those routed to ``e``,
    ``entropy_sums[e]`` sums the normalised entropy over the tokens routed to ``e``,
    ``score_sums[e]`` sums the raw router score of ``e`` over all non-padding tokens.
    """

    n_tokens: Int[Tensor, "*group"]
    counts: Int[Tensor, "*group n_experts"]
    entropy_sums: Float[Tensor, "*group n_experts"]
    score_sums: Float[Tensor, "*group n_experts"]

    @property
    def activation_rate(self) -> Float[Tensor, "*group n_experts"]:
        """``counts / n_tokens``; NaN where there are no tokens."""
        dt = self.entropy_sums.dtype
        return self.counts.to(dt) / self.n_tokens.to(dt).unsqueeze(-1)

    @property
    def entropy(self) -> Float[Tensor, "*group n_experts"]:
        """Mean normalised entropy over routed tokens; NaN where ``counts == 0``."""
        return self.entropy_sums / self.counts.to(self.entropy_sums.dtype)

    @property
    def mean_score(self) -> Float[Tensor, "*group n_experts"]:
        """Mean raw router score over all non-padding tokens; NaN where there are no tokens."""
        dt = self.score_sums.dtype
        return self.score_sums / self.n_tokens.to(dt).unsqueeze(-1)

    @property
    def cwas(self) -> Float[Tensor, "*group n_experts"]:
        """``cwas(activation_rate, entropy)``."""
        return cwas(self.activation_rate, self.entropy)


def routing_sums(
    topk_mask: Bool[Tensor, "*batch n_experts"],
    scores: Float[Tensor, "*batch n_experts"],
    mask: Bool[Tensor, "*batch"] | None = None,
) -> RoutingSums:
    """Per-expert additive aggregates of one batch of routing decisions.

    Returns ``RoutingSums(n_tokens [], counts [n_experts], entropy_sums [n_experts],
    score_sums [n_experts])`` on the input's device. Adding the fields of two batches gives the
    fields of their union, which is what makes dataset-level metrics streamable.

    >>> topk = torch.tensor([[True, False], [True, False], [False, True]])
    >>> scores = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.5, 0.5]])
    >>> s = routing_sums(topk, scores, mask=torch.tensor([True, True, False]))
    >>> int(s.n_tokens), s.counts.tolist(), s.entropy_sums.tolist()
    (2, [2, 0], [1.0, 0.0])
    >>> s.activation_rate.tolist(), s.cwas.tolist()
    ([1.0, 0.0], [0.5, 0.0])
    """
    _check_topk_mask(topk_mask)
    leading = topk_mask.shape[:-1]
    mask = _check_mask(mask, leading, topk_mask.device, "topk_mask")
    _check_scores(scores, topk_mask, mask)
    n_experts = topk_mask.shape[-1]
    acc = _acc_dtype(topk_mask.device)
    m = mask.unsqueeze(-1)  # [*batch 1]
    routed = (topk_mask & m).reshape(-1, n_experts)  # [tokens n_experts]
    # Replace padding rows by ones before the entropy so junk there cannot turn into NaN.
    clean = torch.where(m, scores, torch.ones((), dtype=scores.dtype, device=scores.device))
    h = normalized_entropy(clean).to(acc).reshape(-1, 1)  # [tokens 1]
    raw = torch.where(m, scores.to(acc), 0.0).reshape(-1, n_experts)  # [tokens n_experts]
    return RoutingSums(
        n_tokens=mask.sum(),
        counts=routed.sum(0),
        entropy_sums=(routed.to(acc) * h).sum(0),
        score_sums=raw.sum(0),
    )


def activation_rate(
    topk_mask: Bool[Tensor, "*batch n_experts"], mask: Bool[Tensor, "*batch"] | None = None
) -> Float[Tensor, "n_experts"]:
    """Fraction of non-padding tokens whose top-k contains each expert.

    ``A_e = |{t : e in topk(t)}| / |T|``; sums to k over experts when every token picks k.
    NaN when there is no non-padding token.

    >>> topk = topk_mask_from_indices(torch.tensor([[0], [0], [1], [2]]), 3)
    >>> activation_rate(topk, mask=torch.tensor([True, True, True, False])).tolist()
    [0.6666666666666666, 0.3333333333333333, 0.0]
    """
    _check_topk_mask(topk_mask)
    mask = _check_mask(mask, topk_mask.shape[:-1], topk_mask.device, "topk_mask")
    acc = _acc_dtype(topk_mask.device)
    counts = (topk_mask & mask.unsqueeze(-1)).reshape(-1, topk_mask.shape[-1]).sum(0)
    return counts.to(acc) / mask.sum().to(acc)


def routing_entropy(
    topk_mask: Bool[Tensor, "*batch n_experts"],
    scores: Float[Tensor, "*batch n_experts"],
    mask: Bool[Tensor, "*batch"] | None = None,
) -> Float[Tensor, "n_experts"]:
    """Mean normalised router entropy over the tokens routed to each expert.

    ``H_e = mean_{t routed to e} H(p(.|t)) / log(n_experts)``, ``p(.|t)`` the token's scores
    renormalised to sum 1. NaN for experts no token was routed to.

    >>> topk = torch.tensor([[True, False], [True, False]])
    >>> scores = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    >>> routing_entropy(topk, scores).tolist()
    [0.5, nan]
    """
    return routing_sums(topk_mask, scores, mask).entropy


def cwas(
    activation_rate: Float[Tensor, "*shape"], entropy: Float[Tensor, "*shape"]
) -> Float[Tensor, "*shape"]:
    """Confidence-weighted activation score ``CWAS = A * (1 - H)``: frequent *and* confident.

    Elementwise on tensors of equal shape (e.g. ``[n_experts]`` or ``[domain moe_layer expert]``);
    0 where ``A == 0`` (there ``H`` is NaN by definition); NaN where ``A`` is NaN (no tokens).

    >>> cwas(torch.tensor([0.5, 0.5, 0.0]), torch.tensor([0.0, 0.5, float("nan")])).tolist()
    [0.5, 0.25, 0.0]
    """
    if activation_rate.shape != entropy.shape:
        raise InvalidInputError(
            f"activation_rate has shape {_shape(activation_rate)} but entropy has shape "
            f"{_shape(entropy)}: pass both per expert, over the same tokens."
        )
    dt = torch.promote_types(_compute_dtype(activation_rate), _compute_dtype(entropy))
    a, h = activation_rate.to(dt), entropy.to(dt)
    return torch.where(a == 0, torch.zeros((), dtype=dt, device=a.device), a * (1 - h))


def domain_specificity(
    activation_rate: Float[Tensor, "domain *rest"], dim: int = 0
) -> Float[Tensor, "*rest"]:
    """How concentrated an expert's activation is on few domains: ``1 - H(q_e) / log|domains|``.

    ``q_e(D) = A_e(D) / sum_D' A_e(D')`` over the domain axis ``dim``. 0 when an expert is equally
    active in every domain, 1 when it is active in one domain only. **NaN** where the expert is
    never active in any domain (``q_e`` undefined), where any ``A_e(D)`` is NaN, and everywhere
    when there is a single domain (nothing to be specific against).

    >>> rates = torch.tensor([[0.2, 0.4, 0.0], [0.2, 0.0, 0.0], [0.2, 0.0, 0.0]])  # [domain expert]
    >>> domain_specificity(rates).tolist()
    [0.0, 1.0, nan]
    """
    if activation_rate.ndim == 0:
        raise InvalidInputError("activation_rate must have a domain axis, got a 0-d tensor.")
    a = activation_rate.to(_compute_dtype(activation_rate))
    n_domains = a.shape[dim]
    if bool((a < 0).any()):
        raise InvalidInputError(
            f"activation_rate of shape {_shape(activation_rate)} has negative entries; "
            f"pass rates in [0, 1]."
        )
    total = a.sum(dim, keepdim=True)
    if n_domains < 2:
        return torch.full_like(total.squeeze(dim), float("nan"))
    q = a / total
    h = -torch.special.xlogy(q, q).sum(dim)
    spec = (1 - h / math.log(n_domains)).clamp(0.0, 1.0)
    return torch.where(total.squeeze(dim) > 0, spec, float("nan"))


def kl_divergence(
    p_logits: Float[Tensor, "*batch d_vocab"],
    q_logits: Float[Tensor, "*batch d_vocab"],
    reduction: Literal["none", "mean", "sum"] = "none",
    mask: Bool[Tensor, "*batch"] | None = None,
) -> Float[Tensor, "*batch"] | Float[Tensor, ""]:
    """``KL(P || Q) = sum_y P(y) (log P(y) - log Q(y))`` per row, from logits over the last axis.

    Computed with ``log_softmax`` in fp32 (fp64 for fp64 input), so it is invariant to adding a
    constant to either row of logits; terms with ``P(y) = 0`` contribute 0, and the result is
    clamped at 0 against rounding. ``reduction``: ``"none"`` gives ``[*batch]`` (padding rows 0),
    ``"mean"`` averages and ``"sum"`` sums over the non-padding rows.

    >>> p = torch.tensor([0.5, 0.5]).log()
    >>> q = torch.tensor([0.25, 0.75]).log()
    >>> round(float(kl_divergence(p, q)), 6)  # 0.5 ln 2 + 0.5 ln(2/3) = 0.5 ln(4/3)
    0.143841
    """
    if p_logits.shape != q_logits.shape or p_logits.ndim < 1:
        raise InvalidInputError(
            f"p_logits has shape {_shape(p_logits)} and q_logits {_shape(q_logits)}: both must be "
            f"[*batch d_vocab] with the same shape (same tokens, same vocabulary)."
        )
    if reduction not in ("none", "mean", "sum"):
        raise InvalidInputError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}.")
    dt = torch.promote_types(_compute_dtype(p_logits), _compute_dtype(q_logits))
    log_p = torch.log_softmax(p_logits.to(dt), -1)
    log_q = torch.log_softmax(q_logits.to(dt), -1)
    prob = log_p.exp()
    diff = torch.where(prob > 0, log_p - log_q, 0.0)  # -inf - -inf would be NaN
    kl = (prob * diff).sum(-1).clamp_min(0.0)  # [*batch]
    if mask is None and reduction == "none":
        return kl
    mask = _check_mask(mask, kl.shape, kl.device, "p_logits")
    kl = torch.where(mask, kl, 0.0)
    if reduction == "none":
        return kl
    total = kl.sum()
    return total if reduction == "sum" else total / mask.sum()
