"""The primitives analyses build on (one MoE block alone, the family's routing rule, the unembedding),
kept apart from :mod:`moelens.model` so that each file stays one job. :class:`~moelens.HookedMoE`
inherits them; ``NNsightMoE`` borrows ``route`` (its routers are the same HF modules)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

from torch import Tensor

from ._selectors import resolve_layer
from .errors import InvalidInputError
from .hook_points import CallContext, HookFn
from .inputs import check_last_axis, checked_mask

__all__ = ["AnalysisPrimitives"]

FwdHooks = Sequence[tuple[str | Callable[[str], bool], HookFn]]


class AnalysisPrimitives:
    """Mixin of :class:`~moelens.HookedMoE`: needs its ``cfg``, ``spec``, ``hf_model``, hook tables
    (``_moe_hooks``, ``_registry``, ``hooks()``), ``_routers``, ``_lm_head`` and ``final_norm``."""

    def run_moe_block(
        self,
        layer: int,
        moe_input: Tensor,
        fwd_hooks: FwdHooks = (),
        *,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        """Run only the MoE block of ``layer`` on ``moe_input [batch pos d_model]`` (the value of
        ``blocks.{layer}.moe.hook_in``), with hooks or interventions; returns ``hook_out``'s value.

        This is what makes local analyses cheap: a perturbation's direct effect on the block output
        needs one block, not a forward.

        >>> import torch
        >>> from moelens import HookedMoE
        >>> from moelens.testing import tiny_model
        >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
        >>> _, cache = model.run_with_cache(torch.tensor([[4, 5, 6]]))
        >>> out = model.run_moe_block(1, cache["blocks.1.moe.hook_in"])
        >>> torch.equal(out, cache["blocks.1.moe.hook_out"])
        True
        """
        self._moe_layer(layer)
        check_last_axis(moe_input, "moe_input", "d_model", self.cfg.d_model, ndim=3)
        moe_hooks = self._moe_hooks[self.cfg.moe_layers.index(layer)]
        dtype = self.hf_model.get_input_embeddings().weight.dtype  # the residual stream's, which hook_in sees
        if moe_input.dtype != dtype:
            raise InvalidInputError(
                f"moe_input has dtype {moe_input.dtype} but this model's residual stream (hook_in) is {dtype}; "
                f"pass moe_input.to({dtype})."
            )
        mask = checked_mask(attention_mask, tuple(moe_input.shape[:2]))
        with self.hooks(fwd_hooks), ExitStack() as stack:
            stack.enter_context(self._registry.calling(CallContext(mask.to(moe_input.device))))
            moe_hooks.install(stack)
            output = moe_hooks.block(moe_input)
        hidden = output[0] if self.spec.moe_returns_tuple else output
        return hidden.view(moe_input.shape)  # some blocks return [tokens d_model]

    def route(self, layer: int, logits: Tensor) -> tuple[Tensor, Tensor]:
        """The top-k ``(indices, weights)`` ``[... k]`` that MoE layer ``layer`` selects for router
        logits ``[... n_experts]``, by the family's own rule and router parameters (biases, groups).

        This is what a forward does after a hook edited ``hook_router_logits``: for the clean logits
        it reproduces HF's selection bit for bit; weights are in the rule's dtype (HF's own).

        >>> import torch
        >>> from moelens import HookedMoE
        >>> from moelens.testing import tiny_model
        >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
        >>> _, cache = model.run_with_cache(torch.tensor([[4, 5, 6]]))
        >>> index, weights = model.route(1, cache["blocks.1.moe.hook_router_logits"])
        >>> torch.equal(index, cache["blocks.1.moe.hook_topk_indices"])
        True
        """
        router = self._routers[self._moe_layer(layer)]
        check_last_axis(logits, "logits", "n_experts", self.cfg.n_experts)
        routing = self.spec.routing.route(logits.reshape(-1, logits.shape[-1]), router)
        shape = (*logits.shape[:-1], -1)
        return routing.index.view(shape), routing.weights.view(shape)

    def unembed(self, resid: Tensor) -> Tensor:
        """Logits ``[... d_vocab]`` from the residual stream ``[... d_model]`` entering the final
        norm: final norm, LM head, and the family's own logit post-processing (Granite's scaling).

        ``unembed(model(x, stop_at_layer=model.cfg.n_layers))`` equals ``model(x)`` bit for bit.

        >>> import torch
        >>> from moelens import HookedMoE
        >>> from moelens.testing import tiny_model
        >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
        >>> ids = torch.tensor([[4, 5, 6]])
        >>> torch.equal(model.unembed(model(ids, stop_at_layer=model.cfg.n_layers)), model(ids))
        True
        """
        if self._lm_head is None:
            raise InvalidInputError(f"{type(self.hf_model).__name__} has no output embeddings (LM head) to unembed with.")
        check_last_axis(resid, "resid", "d_model", self.cfg.d_model)
        return self.spec.logits_from_head(self._lm_head(self.final_norm(resid)), self.hf_model.config)

    def _moe_layer(self, layer: Any) -> int:
        return resolve_layer(self, layer)
