"""Perturbed routing without the router: the top-k of a layer under the push of each expert, from
the clean router logits, and its comparison with the clean routing.

Every method first needs the top-k of layer ``l`` under the push of each expert. That is the
family's routing rule applied to the clean router logits plus ``sign * magnitude`` on one expert,
exactly what ``Perturb``'s hook does inside a forward; so one router pass per batch serves all
experts (:func:`perturbed_routing`, through :meth:`moelens.HookedMoE.route`). Where top-k set and
weights are unchanged (up to float32 rounding, :data:`ROUTING_TOL`) at every real token of an
input, the push cannot change anything downstream: effect 0, never run.
"""

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .options import SweepOptions

if TYPE_CHECKING:
    from moelens.model import HookedMoE

__all__ = ["ROUTING_TOL", "changes", "perturbed_routing", "routing_change"]

# A weight change at or below float32 rounding of the routing (relative to max(1, |w|)) counts as
# "routing unchanged": the block output then differs from the clean one by rounding only.
ROUTING_TOL = 1e-6


def perturbed_routing(
    model: "HookedMoE", layer: int, logits: Tensor, experts: Tensor, delta: float, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Top-k ``(index, weights)`` ``[n_targets tokens k]`` of ``layer`` when each target of
    ``experts [n_targets]`` in turn gets ``delta`` added to its router logit, from the clean router
    logits ``[tokens n_experts]``.

    This is what ``Perturb`` does inside a forward (the same edit of the logits, then the family's
    routing rule, weights cast to the router's weight ``dtype``) without running the router's
    projection once per target: one router pass serves every expert.

    >>> from moelens import HookedMoE
    >>> from moelens.testing import tiny_model
    >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
    >>> index, weights = perturbed_routing(model, 0, torch.zeros(3, 4), torch.arange(4), 1.0, torch.float32)
    >>> index.shape, bool((index[:, :, 0] == torch.arange(4)[:, None]).all())  # the pushed expert leads
    (torch.Size([4, 3, 2]), True)
    """
    push = torch.nn.functional.one_hot(experts, logits.shape[-1]).to(logits.dtype) * delta  # [n n_experts]
    edited = logits.unsqueeze(0) + push.unsqueeze(1)  # [n tokens n_experts], as Perturb's hook edits them
    index, weights = model.route(layer, edited)
    return index, weights.to(dtype)


def _dense(index: Tensor, weights: Tensor, n_experts: int) -> Tensor:
    """``[... k]`` top-k -> ``[... n_experts]`` fp32 gate weights, 0 where not selected."""
    out = torch.zeros(*index.shape[:-1], n_experts, dtype=torch.float32, device=index.device)
    return out.scatter_(-1, index, weights.float())


def routing_change(
    index: Tensor, weights: Tensor, clean_index: Tensor, clean_weights: Tensor, n_experts: int, tol: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Compare a perturbed routing ``[rows pos k]`` with the clean one (broadcast over rows).

    Returns ``changed [rows pos]`` (some gate weight moved by more than ``tol * max(1, |w|)``),
    ``swapped [rows pos]`` (the selected *set* differs) and ``dense [rows pos n_experts]``, the
    perturbed gate weights.

    >>> index, weights = torch.tensor([[[0, 1]]]), torch.tensor([[[0.6, 0.4]]])
    >>> changed, swapped, _ = routing_change(index, weights, torch.tensor([[1, 0]]), torch.tensor([[0.4, 0.6]]), 3, 1e-6)
    >>> changed.tolist(), swapped.tolist()  # the same routing, slots in another order
    ([[False]], [[False]])
    """
    dense = _dense(index, weights, n_experts)
    clean = _dense(clean_index, clean_weights, n_experts)
    changed = ((dense - clean).abs() > tol * clean.abs().clamp_min(1.0)).any(-1)
    swapped = (index.sort(-1).values != clean_index.sort(-1).values).any(-1)
    return changed | swapped, swapped, dense


def changes(
    model: "HookedMoE", layer: int, logits: Tensor, index: Tensor, weights: Tensor, options: SweepOptions, tol: float,
    budget: int,
) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """For chunks of target experts: ``(experts [n], changed [n tokens], swapped [n tokens], dense
    [n tokens n_experts])`` against the clean routing ``index, weights [tokens k]``; ``budget``
    bounds ``n * tokens`` per routing call."""
    n_experts = model.cfg.n_experts
    if logits.shape[0] == 0:  # no (pushed) token in this batch: nothing moves
        none = torch.zeros(n_experts, 0, dtype=torch.bool, device=logits.device)
        yield torch.arange(n_experts, device=logits.device), none, none, torch.zeros(n_experts, 0, n_experts, device=logits.device)
        return
    chunk = max(1, budget // max(1, logits.shape[0]))  # targets per routing call
    for e0 in range(0, n_experts, chunk):
        experts = torch.arange(e0, min(e0 + chunk, n_experts), device=logits.device)
        new_index, new_weights = perturbed_routing(model, layer, logits, experts, options.delta, weights.dtype)
        changed, swapped, dense = routing_change(new_index, new_weights, index, weights, n_experts, tol)
        yield experts, changed, swapped, dense
