"""TransformerLens's weight names on a wrapped model: ``W_E``, ``W_U``, ``W_router``, and the routed
experts' ``W_gate``, ``W_in``, ``W_out`` in one layout whatever the family stores.

Layout (TransformerLens's convention, ``x @ W``): ``W_gate`` and ``W_in`` are ``[expert d_model d_mlp]``,
``W_out`` is ``[expert d_mlp d_model]``; one expert computes
``act(x @ W_gate[e] + b_gate[e]) * (x @ W_in[e] + b_in[e]) @ W_out[e] + b_out[e]`` (biases where the
family has them; gpt_oss's activation is its clamped SwiGLU, see ``cfg.act_fn``). Where HF keeps the
experts as fused 3-D parameters (every registered family but DeepSeek-MoE's remote code), the
tensors of :meth:`WeightMethods.expert_weights` are **views** of HF's parameters: editing them edits
the model. With one module per expert (a ModuleList) the ``[expert ...]`` stack is a copy.

The model-wide properties ``W_router``, ``W_gate``, ``W_in`` and ``W_out`` stack every decoder layer,
indexed by the layer number of the hook names (``W_in[L]`` is ``blocks.{L}``'s experts), with NaN
on dense layers (mixed models such as DeepSeek's first layers have no router nor routed experts
there; NaN makes any use of them visible). A stack of several parameters cannot be a view of them:
they are copies. To edit weights, edit the views of :meth:`~WeightMethods.expert_weights` /
:meth:`~WeightMethods.router_weight` of one layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .architectures import ExpertLayout, resolve

__all__ = ["ExpertWeights", "WeightMethods"]


class ExpertWeights(NamedTuple):
    """The routed experts of one MoE layer, ``x @ W`` layout; biases are None where the family has none."""

    W_gate: Tensor  # [expert d_model d_mlp]
    W_in: Tensor  # [expert d_model d_mlp] (HF's up projection)
    W_out: Tensor  # [expert d_mlp d_model] (HF's down projection)
    b_gate: Tensor | None  # [expert d_mlp]
    b_in: Tensor | None  # [expert d_mlp]
    b_out: Tensor | None  # [expert d_model]


def read_expert_weights(experts: nn.Module, layout: ExpertLayout) -> ExpertWeights:
    """The weights of an experts module in the ``x @ W`` layout (views of fused parameters)."""
    if layout.gate_up is None:  # one module per expert: nn.Linear weights are [out in]
        def stacked(name: str) -> Tensor:
            return torch.stack([getattr(expert, name).weight.T for expert in experts])

        return ExpertWeights(stacked(layout.module_gate), stacked(layout.module_up), stacked(layout.module_down), None, None, None)
    gate_up = getattr(experts, layout.gate_up)
    down = getattr(experts, layout.down)
    if not layout.transposed:
        gate_up = gate_up.transpose(1, 2)  # [E 2F H] -> [E H 2F]
        down = down.transpose(1, 2)  # [E H F] -> [E F H]
    W_gate, W_in = _split(gate_up, layout.interleaved)
    b_gate = b_in = b_out = None
    if layout.gate_up_bias is not None:
        b_gate, b_in = _split(getattr(experts, layout.gate_up_bias), layout.interleaved)
    if layout.down_bias is not None:
        b_out = getattr(experts, layout.down_bias)
    return ExpertWeights(W_gate, W_in, down, b_gate, b_in, b_out)


def _split(fused: Tensor, interleaved: bool) -> tuple[Tensor, Tensor]:
    """Gate and up halves of the last axis ``2F`` (views): even/odd columns, or first/second half."""
    if interleaved:
        return fused[..., ::2], fused[..., 1::2]
    half = fused.shape[-1] // 2
    return fused[..., :half], fused[..., half:]


class WeightMethods:
    """Mixin of :class:`~moelens.HookedMoE`: needs ``hf_model``, ``spec``, ``cfg``, ``layers`` and ``_routers``."""

    @property
    def W_E(self) -> Tensor:
        """The token embedding ``[d_vocab d_model]``: HF's parameter itself.

        >>> from moelens import HookedMoE
        >>> from moelens.testing import tiny_model
        >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
        >>> model.W_E.shape, model.W_E is model.hf_model.get_input_embeddings().weight
        (torch.Size([97, 32]), True)
        """
        return self.hf_model.get_input_embeddings().weight

    @property
    def W_U(self) -> Tensor:
        """The unembedding ``[d_model d_vocab]``: a transposed view of the LM head's weight (no bias,
        and without a family's logit scaling, which :meth:`unembed` applies).

        >>> from moelens import HookedMoE
        >>> from moelens.testing import tiny_model
        >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
        >>> model.W_U.shape, model.W_U.data_ptr() == model.hf_model.lm_head.weight.data_ptr()
        (torch.Size([32, 97]), True)
        """
        return self.hf_model.get_output_embeddings().weight.T

    @property
    def blocks(self) -> nn.ModuleList:
        """The decoder layers (TransformerLens's ``model.blocks``; the same object as ``model.layers``)."""
        return self.layers

    def router_weight(self, layer: int) -> Tensor:
        """The router of MoE layer ``layer`` as ``[d_model n_experts]`` (``resid @ W`` gives the router
        logits, plus the router's bias where the family has one): a view of HF's parameter.

        >>> from moelens import HookedMoE
        >>> from moelens.testing import tiny_model
        >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
        >>> model.router_weight(0).shape
        torch.Size([32, 4])
        """
        return getattr(self._routers[self._moe_layer(layer)], self.spec.router_weight).T

    def expert_weights(self, layer: int) -> ExpertWeights:
        """The routed experts of MoE layer ``layer``: ``W_gate``, ``W_in`` ``[expert d_model d_mlp]``,
        ``W_out`` ``[expert d_mlp d_model]`` and biases (None where absent). Views of HF's fused
        parameters (edits reach the model); a copy for ModuleList experts.

        >>> from moelens import HookedMoE
        >>> from moelens.testing import tiny_model
        >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
        >>> w = model.expert_weights(1)
        >>> w.W_in.shape, w.W_out.shape, w.b_in  # [expert d_model d_mlp], [expert d_mlp d_model]
        (torch.Size([4, 32, 48]), torch.Size([4, 48, 32]), None)
        """
        block = resolve(self.layers[self._moe_layer(layer)], self.spec.moe_block)
        return read_expert_weights(resolve(block, self.spec.experts), self.spec.expert_weights)

    @property
    def W_router(self) -> Tensor:
        """Every router ``[layer d_model n_experts]`` (NaN on dense layers): a stacked copy; edit
        through :meth:`router_weight`.

        >>> from moelens import HookedMoE
        >>> from moelens.testing import tiny_model
        >>> w = HookedMoE.from_hf(tiny_model("deepseek_v3")).W_router  # layer 0 is dense
        >>> w.shape, bool(w[0].isnan().all()), bool(w[1].isnan().any())
        (torch.Size([3, 32, 8]), True, False)
        """
        return self._per_layer(self.router_weight)

    @property
    def W_gate(self) -> Tensor:
        """Every expert's gate projection ``[layer expert d_model d_mlp]`` (a stacked copy; NaN on dense layers)."""
        return self._per_layer(lambda layer: self.expert_weights(layer).W_gate)

    @property
    def W_in(self) -> Tensor:
        """Every expert's up projection ``[layer expert d_model d_mlp]`` (a stacked copy; NaN on dense layers).

        >>> from moelens import HookedMoE
        >>> from moelens.testing import tiny_model
        >>> HookedMoE.from_hf(tiny_model("mixtral")).W_in.shape
        torch.Size([2, 4, 32, 48])
        """
        return self._per_layer(lambda layer: self.expert_weights(layer).W_in)

    @property
    def W_out(self) -> Tensor:
        """Every expert's down projection ``[layer expert d_mlp d_model]`` (a stacked copy; NaN on dense layers)."""
        return self._per_layer(lambda layer: self.expert_weights(layer).W_out)

    def _per_layer(self, read: Callable[[int], Tensor]) -> Tensor:
        """``read(L)`` of every MoE layer, stacked over all layers with NaN on the dense ones."""
        found = {layer: read(layer) for layer in self.cfg.moe_layers}
        like = next(iter(found.values()))
        stacked = torch.full((self.cfg.n_layers, *like.shape), float("nan"), dtype=like.dtype, device=like.device)
        for layer, tensor in found.items():
            stacked[layer] = tensor
        return stacked
