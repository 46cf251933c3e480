"""Routing patches shared by the mediation analysis and expert representations.

Two primitives, both on the public hook points:

- :func:`dense_gates`: top-k ``(index, weights)`` -> dense gate weights ``[... n_experts]`` (0 where
  an expert is not selected), the form in which "one expert's routing" is defined;
- :func:`expert_contribution`: what one expert adds to an MoE block's output at a given gate weight,
  ``C_e(x, w) = block(x; only e, weight w) - block(x; only e, weight 0)``, computed with
  :meth:`HookedMoE.run_moe_block` on one-token rows. Every registered family's block is a sum over
  experts of a term that vanishes at weight 0 (the weight scales the expert's output, or, for
  Llama-4, its input; the shared experts do not depend on the routing), so changing one expert's
  gate from ``w`` to ``w'`` changes the block output by exactly ``C_e(x, w') - C_e(x, w)``, also when
  the expert was not in the top-k before (a token may then run ``k + 1`` experts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from moelens.names import moe_name

if TYPE_CHECKING:
    from moelens.model import HookedMoE

__all__ = ["dense_gates", "expert_contribution"]


def dense_gates(index: Tensor, weights: Tensor, n_experts: int) -> Tensor:
    """``index, weights [... k]`` -> fp32 gate weights ``[... n_experts]``, 0 where not selected.

    >>> dense_gates(torch.tensor([[2, 0]]), torch.tensor([[0.7, 0.3]]), 4).tolist()
    [[0.30000001192092896, 0.0, 0.699999988079071, 0.0]]
    """
    out = torch.zeros(*index.shape[:-1], n_experts, dtype=torch.float32, device=index.device)
    return out.scatter_(-1, index, weights.float())


def expert_contribution(
    model: HookedMoE, layer: int, tokens: Tensor, experts: Tensor, weight: Tensor, max_rows: int = 4096
) -> Tensor:
    """``C_e(x, w)`` ``[n d_model]`` (fp32) for each token ``x`` of ``tokens [n d_model]`` (MoE inputs
    of ``layer``), expert ``e`` of ``experts [n]`` and gate weight ``w`` of ``weight [n]``.

    Each token is a one-token row; the routing hooks select ``e`` in the first slot with weight
    ``w`` and fill the other slots with distinct experts at weight 0. Half the rows run at weight 0:
    the difference removes the shared experts and any bias of the block.

    >>> from moelens import HookedMoE
    >>> from moelens.testing import tiny_model
    >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
    >>> x = torch.randn(3, model.cfg.d_model)
    >>> c = expert_contribution(model, 0, x, torch.tensor([0, 1, 1]), torch.tensor([0.5, 1.0, 2.0]))
    >>> half = expert_contribution(model, 0, x, torch.tensor([0, 1, 1]), torch.tensor([0.25, 0.5, 1.0]))
    >>> torch.allclose(c, 2 * half, atol=1e-6)  # linear in the weight (Mixtral scales the output)
    True
    """
    n, k, n_experts = len(experts), model.cfg.top_k, model.cfg.n_experts
    out = torch.zeros(n, tokens.shape[-1], dtype=torch.float32, device=tokens.device)
    if n == 0:
        return out
    fill = torch.arange(1, k, device=experts.device)
    for start in range(0, n, max_rows):
        sl = slice(start, start + max_rows)
        e = experts[sl]
        rows = len(e)
        index = torch.cat([e[:, None], (e[:, None] + fill) % n_experts], dim=1)  # [rows k], distinct experts
        index = index.repeat(2, 1)[:, None, :]  # [2*rows 1 k]: weight w, then weight 0
        gate = torch.zeros(2 * rows, 1, k, dtype=torch.float32, device=tokens.device)
        gate[:rows, 0, 0] = weight[sl].float()
        x = tokens[sl].repeat(2, 1)[:, None, :]  # [2*rows 1 d_model]

        hooks = [(moe_name(layer, "hook_topk_indices"), _constant(index)), (moe_name(layer, "hook_topk_weights"), _constant(gate))]
        with torch.no_grad():
            block = model.run_moe_block(layer, x, hooks).float()[:, 0]  # [2*rows d_model]
        out[sl] = block[:rows] - block[rows:]
    return out


def _constant(value: Tensor):
    """A hook that replaces the activation with ``value`` (cast to its dtype)."""

    def hook(activation: Tensor, hook) -> Tensor:
        return value.to(activation.dtype)

    return hook
