"""Router output formats (the :class:`~moelens.architectures.spec.RouterIO` of each family)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .spec import RouterIO, RouterOutput

__all__ = ["LOGITS_WEIGHTS_INDEX", "INDEX_WEIGHTS_AUX", "DENSE_SCORES_LOGITS"]

# transformers v5 routers: ``(router_logits [T,E], top_k_weights [T,k], top_k_index [T,k])``.
LOGITS_WEIGHTS_INDEX = RouterIO(
    name="(logits, weights, index)",
    unpack=lambda output, router_input, router: RouterOutput(*output),
    pack=lambda output, new: (new.logits, new.weights, new.index),
)


def _logits_from_input(router_input, router) -> object:
    # MoEGate computes ``F.linear(hidden.view(-1, h), weight)`` without returning it: recompute it the
    # same way so that hooks can read and edit the logits.
    hidden = router_input.reshape(-1, router_input.shape[-1])
    return F.linear(hidden, router.weight, None)


# DeepSeek-MoE remote code ``MoEGate``: ``(topk_idx [T,k], topk_weight [T,k], aux_loss)``.
INDEX_WEIGHTS_AUX = RouterIO(
    name="(index, weights, aux_loss)",
    unpack=lambda output, router_input, router: RouterOutput(
        _logits_from_input(router_input, router), output[1], output[0]
    ),
    pack=lambda output, new: (new.index, new.weights, output[2]),
)


def _unpack_dense(output, router_input, router) -> RouterOutput:
    dense, logits = output
    # the same top-k call as Llama4Router, so the indices are HF's own
    index = torch.topk(logits, router.top_k, dim=1)[1]
    return RouterOutput(logits, dense.gather(1, index), index)


# Llama-4 ``Llama4Router``: ``(scores [T,E] dense, zero where not selected, router_logits [T,E])``.
DENSE_SCORES_LOGITS = RouterIO(
    name="(dense scores, logits)",
    unpack=_unpack_dense,
    pack=lambda output, new: (torch.zeros_like(output[0]).scatter(1, new.index, new.weights.to(output[0].dtype)), new.logits),
)
