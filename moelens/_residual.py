"""TransformerLens's residual-stream helpers on :class:`~moelens.ActivationCache`: ``accumulated_resid``,
``decompose_resid``, ``apply_ln_to_stack``, ``logit_attrs`` and ``stack_activation``.

They read the wrapped model through the cache's ``model`` (``HookedMoE`` or ``NNsightMoE``): its layer
count, its spec (the residual form and norm formula, :class:`~moelens.architectures.ResidualForm`), its
real norms and LM head. moelens does not fold norm weights into ``W_U``, so ``apply_ln`` includes the
norm's weight: ``apply_ln_to_stack(accumulated_resid()[-1:]) @ W_U`` gives the logits (plus, for
LayerNorm families, the norm's bias times ``W_U``, which belongs to no component).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from .architectures import resolve
from .architectures.norms import apply_norm, inverse_scale
from .errors import InvalidInputError, UnsupportedArchitectureError
from .names import HOOK_TABLE
from .utils import get_act_name

__all__ = ["ResidualHelpers"]

PosSlice = int | slice | Tensor | None


def _slice_pos(tensor: Tensor, pos_slice: PosSlice, pos_dim: int) -> Tensor:
    """``tensor`` at ``pos_slice`` along ``pos_dim`` (an int drops the axis, as Python indexing does)."""
    if pos_slice is None:
        return tensor
    index = [slice(None)] * tensor.ndim
    index[pos_dim] = pos_slice
    return tensor[tuple(index)]


class ResidualHelpers:
    """Mixin of :class:`~moelens.ActivationCache` (needs ``model``, ``__getitem__``, ``has_batch_dim``)."""

    model: Any
    has_batch_dim: bool

    def _model(self, what: str) -> Any:
        if self.model is None:
            raise InvalidInputError(
                f"cache.{what} needs the model (its layers and norms); this cache was built without one. "
                "Use the cache that model.run_with_cache(...) returns."
            )
        return self.model

    def _pos_dim(self) -> int:
        return 1 if self.has_batch_dim else 0  # [batch pos d_model] or [pos d_model]

    def stack_activation(self, name: str, layer: int = -1, sublayer_type: str | None = None) -> Tensor:
        """``[layer ...]``: the activation ``name`` (a short name as :func:`moelens.utils.get_act_name`
        takes, e.g. ``"resid_post"`` or ``"router_logits"``) of every layer before ``layer`` (-1: all).
        MoE names stack the MoE layers only, so index 0 is the first MoE layer.

        >>> from moelens import HookedMoE
        >>> from moelens.testing import tiny_model
        >>> model = HookedMoE.from_hf(tiny_model("deepseek_v3"))
        >>> _, cache = model.run_with_cache(torch.tensor([[4, 5, 6]]))
        >>> cache.stack_activation("resid_post").shape, cache.stack_activation("router_logits").shape
        (torch.Size([3, 1, 3, 32]), torch.Size([2, 1, 3, 8]))
        """
        model = self._model("stack_activation")
        end = model.cfg.n_layers if layer == -1 else layer
        suffix = get_act_name(name, 0).rsplit(".", 1)[-1]
        layers = range(end) if HOOK_TABLE[suffix].scope == "layer" else [m for m in model.cfg.moe_layers if m < end]
        if HOOK_TABLE[suffix].scope == "shared" and model.cfg.n_shared_experts == 0:
            layers = []
        if not layers:
            raise InvalidInputError(f"stack_activation({name!r}, layer={layer}): no layer before {end} has it.")
        return torch.stack([self[get_act_name(name, index)] for index in layers])

    def accumulated_resid(
        self,
        layer: int | None = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice: PosSlice = None,
        mlp_input: bool = False,
        return_labels: bool = False,
    ) -> Tensor | tuple[Tensor, list[str]]:
        """``[component batch pos d_model]``: the residual stream entering each layer up to ``layer``
        (None or -1: every layer, then the final residual stream, label ``"final_post"``), as
        TransformerLens's; ``incl_mid`` adds each ``resid_mid``, ``mlp_input`` the ``resid_mid`` of
        ``layer`` itself. ``apply_ln`` applies the norm that reads the stream at ``layer`` (the final
        norm by default) with the cached stream's scale: ``[-1]`` then gives the final norm's output.

        >>> from moelens import HookedMoE
        >>> from moelens.testing import tiny_model
        >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
        >>> _, cache = model.run_with_cache(torch.tensor([[4, 5, 6]]))
        >>> resid, labels = cache.accumulated_resid(incl_mid=True, return_labels=True)
        >>> labels
        ['0_pre', '0_mid', '1_pre', '1_mid', 'final_post']
        >>> normed = cache.accumulated_resid(apply_ln=True)[-1]
        >>> torch.allclose(normed, cache["ln_final.hook_normalized"], atol=1e-6)
        True
        """
        n = self._model("accumulated_resid").cfg.n_layers
        layer = n if layer is None or layer == -1 else layer
        parts, labels = [], []
        for index in range(layer + 1):
            if index == n:
                parts.append(self["resid_post", n - 1])
                labels.append("final_post")
                continue
            parts.append(self["resid_pre", index])
            labels.append(f"{index}_pre")
            if (incl_mid and index < layer) or (mlp_input and index == layer):
                parts.append(self["resid_mid", index])
                labels.append(f"{index}_mid")
        stack = _slice_pos(torch.stack(parts), pos_slice, self._pos_dim() + 1)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input=mlp_input, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def decompose_resid(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        mode: Literal["all", "attn", "mlp"] = "all",
        apply_ln: bool = False,
        pos_slice: PosSlice = None,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ) -> Tensor | tuple[Tensor, list[str]]:
        """``[component batch pos d_model]``: what each part wrote into the residual stream entering
        ``layer`` (None: the final stream): the embedding, then every layer's ``attn_out`` and
        ``mlp_out`` (``mode`` keeps one kind), each times the family's branch factor (Granite's
        ``residual_multiplier``), so the components sum to the stream. Families whose skip connection
        is not a plain sum (MiniMax) raise :class:`~moelens.errors.UnsupportedArchitectureError`.

        >>> from moelens import HookedMoE
        >>> from moelens.testing import tiny_model
        >>> model = HookedMoE.from_hf(tiny_model("qwen2_moe"))
        >>> _, cache = model.run_with_cache(torch.tensor([[4, 5, 6]]))
        >>> parts, labels = cache.decompose_resid(return_labels=True)
        >>> labels
        ['embed', '0_attn_out', '0_mlp_out', '1_attn_out', '1_mlp_out']
        >>> torch.allclose(parts.sum(0), cache["resid_post", -1], atol=1e-5)
        True
        """
        model = self._model("decompose_resid")
        form = model.spec.residual
        if not form.additive:
            raise UnsupportedArchitectureError(
                f"decompose_resid: in {model.cfg.architecture!r} {form.note}. Use accumulated_resid, or the "
                "hook_attn_out/hook_mlp_out activations themselves."
            )
        if mode not in ("all", "attn", "mlp"):
            raise InvalidInputError(f"decompose_resid(mode={mode!r}): pass 'all', 'attn' or 'mlp'.")
        n = model.cfg.n_layers
        layer = n if layer is None or layer == -1 else layer
        config = model.hf_model.config
        branch = 1.0 if form.branch_scale is None else form.branch_scale(config)
        parts, labels = [], []

        def add(tensor: Tensor, scale: float, label: str) -> None:
            parts.append(tensor if scale == 1.0 else tensor * scale)  # HF's own op: x * factor
            labels.append(label)

        if incl_embeds:
            add(self["embed"], 1.0 if form.embed_scale is None else form.embed_scale(config), "embed")
        for index in range(layer + (1 if mlp_input else 0)):
            if mode != "mlp":
                add(self["attn_out", index], branch, f"{index}_attn_out")
            if mode != "attn" and index < layer:
                add(self["mlp_out", index], branch, f"{index}_mlp_out")
        stack = _slice_pos(torch.stack(parts), pos_slice, self._pos_dim() + 1)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input=mlp_input, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def apply_ln_to_stack(
        self, residual_stack: Tensor, layer: int | None = None, mlp_input: bool = False, pos_slice: PosSlice = None
    ) -> Tensor:
        """The norm that reads the residual stream at ``layer`` (None or -1: the final norm; else the
        layer's attention norm, or with ``mlp_input`` its pre-MLP norm), applied to every component of
        ``residual_stack [... batch pos d_model]`` with the scale of the cached stream there (its
        ``pos_slice`` positions, matching a sliced stack). The norm's weight is applied (moelens does not
        fold it into ``W_U``); a LayerNorm's bias is not (it belongs to no component).

        >>> from moelens import HookedMoE
        >>> from moelens.testing import tiny_model
        >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
        >>> _, cache = model.run_with_cache(torch.tensor([[4, 5, 6]]))
        >>> out = cache.apply_ln_to_stack(cache.stack_activation("attn_out"))
        >>> out.shape
        torch.Size([2, 1, 3, 32])
        """
        model = self._model("apply_ln_to_stack")
        n = model.cfg.n_layers
        if layer is None or layer in (-1, n):
            norm, reference = resolve(model.hf_model, model.spec.final_norm), self["resid_post", n - 1]
        elif mlp_input:
            norm, reference = resolve(model.layers[layer], model.spec.mlp_norm), self["resid_mid", layer]
        else:
            norm, reference = resolve(model.layers[layer], model.spec.attn_norm), self["resid_pre", layer]
        eps = getattr(model.hf_model.config, model.spec.norm_eps_attr)
        inverse = inverse_scale(_slice_pos(reference, pos_slice, self._pos_dim()), model.spec.norm, eps)
        weight = norm.weight.to(residual_stack.device) if norm.weight is not None else None
        return apply_norm(residual_stack, inverse.to(residual_stack.device), model.spec.norm, weight)

    def logit_attrs(
        self, residual_stack: Tensor, tokens: int | str | Tensor, incorrect_tokens: int | str | Tensor | None = None,
        pos_slice: PosSlice = None,
    ) -> Tensor:
        """``[component ...]``: each component's direct contribution to the logit of ``tokens`` (minus
        that of ``incorrect_tokens``), as TransformerLens's: the final norm with the cached scale
        (:meth:`apply_ln_to_stack`), then the unembedding direction, then the family's logit
        post-processing (Granite's scaling). ``tokens``: an id, a one-token string, or ids shaped like
        the stack's leading batch/pos axes.

        >>> from moelens import HookedMoE
        >>> from moelens.testing import tiny_model
        >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
        >>> logits, cache = model.run_with_cache(torch.tensor([[4, 5, 6]]))
        >>> attrs = cache.logit_attrs(cache.accumulated_resid(pos_slice=-1)[-1:], 7, pos_slice=-1)
        >>> torch.allclose(attrs[0], logits[:, -1, 7], atol=1e-5)
        True
        """
        model = self._model("logit_attrs")
        directions = self._directions(model, tokens)
        if incorrect_tokens is not None:
            directions = directions - self._directions(model, incorrect_tokens)
        scaled = self.apply_ln_to_stack(residual_stack, None, pos_slice=pos_slice)
        attrs = (scaled * directions.to(scaled.device, scaled.dtype)).sum(-1)
        return model.spec.logits_from_head(attrs, model.hf_model.config)

    @staticmethod
    def _directions(model: Any, tokens: int | str | Tensor) -> Tensor:
        """Rows of the unembedding ``[... d_model]`` for token ids (or a one-token string)."""
        if isinstance(tokens, str):
            ids = model.tokenizer(tokens, add_special_tokens=False)["input_ids"] if model.tokenizer is not None else []
            if len(ids) != 1:
                raise InvalidInputError(f"logit_attrs: {tokens!r} is {len(ids)} tokens {ids}; pass one token or its id.")
            tokens = ids[0]
        head = model.hf_model.get_output_embeddings()
        index = torch.as_tensor(tokens, device=head.weight.device)
        return head.weight[index]  # [d_vocab d_model] rows -> [... d_model]
