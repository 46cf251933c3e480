"""Torch hooks for the TransformerLens stream hook points: ``hook_embed``, ``blocks.{L}.hook_attn_out``,
``blocks.{L}.hook_resid_mid``, ``blocks.{L}.hook_mlp_out`` and ``ln_final.hook_normalized``.

Like :mod:`moelens._interception`, nothing replaces an HF module or its forward, and a torch hook is
installed for one call only when its hook point has functions: with nothing hooked these points cost
one attribute check per layer and call. Module outputs (embedding, attention, MLP/MoE block, final
norm) are replaced when a hook returns a new tensor. The residual stream between attention and the
MLP is different: HF's decoder layer keeps it in a local variable that both the pre-MLP norm and the
skip connection read, so an edit is *written into that tensor* (``copy_``) rather than passed to the
norm alone, which would leave the skip connection on the old value.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from torch import Tensor, nn

from ._torch_hooks import own_hook
from .hook_points import HookPoint

__all__ = ["ModelStreamHooks", "StreamHooks"]


def _split(output: Any) -> tuple[Tensor, tuple]:
    """A module's main tensor and the rest of its tuple (attention returns (out, weights); some MoE
    blocks return (hidden, router scores))."""
    return (output[0], tuple(output[1:])) if isinstance(output, tuple) else (output, ())


def _join(tensor: Tensor, rest: tuple, was_tuple: bool) -> Any:
    return (tensor, *rest) if was_tuple else tensor


def replace_output(point: HookPoint, output: Any, batch_pos: tuple[int, int]) -> Any:
    """Run a module's output through ``point`` as ``[batch pos d_model]``; the module's own output form
    (tuple or not, ``[tokens d]`` or ``[batch pos d]``) is kept when a hook returns a new tensor."""
    hidden, rest = _split(output)
    view = hidden.view(*batch_pos, hidden.shape[-1])  # [tokens d] or [batch pos d] -> [batch pos d]
    new = point(view)
    if new is view:
        return None
    return _join(new.reshape(hidden.shape), rest, isinstance(output, tuple))


class StreamHooks:
    """``hook_attn_out``, ``hook_resid_mid`` and ``hook_mlp_out`` of one decoder layer."""

    def __init__(self, attention: nn.Module, mlp_norm: nn.Module, mlp: nn.Module, points: dict[str, HookPoint]):
        self.attention, self.mlp_norm, self.mlp = attention, mlp_norm, mlp
        self.points = points  # suffix -> HookPoint

    def install(self, stack: ExitStack) -> None:
        """Called after the MoE hooks, so that on an MoE layer ``hook_mlp_out`` sees what
        ``moe.hook_out`` returned (torch runs forward hooks in registration order)."""
        if self.points["hook_attn_out"].active:
            own_hook(stack, self.attention, self._attn_post)
        if self.points["hook_resid_mid"].active:
            own_hook(stack, self.mlp_norm, self._mid_pre, pre=True)
        if self.points["hook_mlp_out"].active:
            own_hook(stack, self.mlp, self._mlp_post)

    def _attn_post(self, module: nn.Module, args: tuple, output: Any) -> Any:
        hidden, _ = _split(output)
        return replace_output(self.points["hook_attn_out"], output, tuple(hidden.shape[:2]))

    def _mlp_post(self, module: nn.Module, args: tuple, output: Any) -> Any:
        return replace_output(self.points["hook_mlp_out"], output, tuple(args[0].shape[:2]))

    def _mid_pre(self, module: nn.Module, args: tuple) -> None:
        resid = args[0]
        point = self.points["hook_resid_mid"]
        if point.has_bwd:
            # A backward function needs a node of its own that the copy below does not rewrite (a view
            # of ``resid`` would be re-based by it, and its gradient lost): hand the points a copy and
            # write what comes back, in-place edits included, into HF's tensor.
            resid.copy_(point(resid.clone()))
            return None
        new = point(resid)
        if new is not resid:
            same_storage = new.untyped_storage().data_ptr() == resid.untyped_storage().data_ptr()
            resid.copy_(new.clone() if same_storage else new)  # a view of resid: read it before writing
        return None


class ModelStreamHooks:
    """``hook_embed`` (the input embedding's output) and ``ln_final.hook_normalized`` (the final norm's)."""

    def __init__(self, embed: nn.Module, final_norm: nn.Module, points: dict[str, HookPoint]):
        self.embed, self.final_norm = embed, final_norm
        self.points = points

    def install(self, stack: ExitStack) -> None:
        if self.points["hook_embed"].active:
            own_hook(stack, self.embed, self._embed_post)
        if self.points["ln_final.hook_normalized"].active:
            own_hook(stack, self.final_norm, self._norm_post)

    def _embed_post(self, module: nn.Module, args: tuple, output: Tensor) -> Any:
        return replace_output(self.points["hook_embed"], output, tuple(output.shape[:2]))

    def _norm_post(self, module: nn.Module, args: tuple, output: Tensor) -> Any:
        return replace_output(self.points["ln_final.hook_normalized"], output, tuple(output.shape[:2]))
