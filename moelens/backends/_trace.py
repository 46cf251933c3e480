"""What runs *inside* an nnsight trace: HF's own tensors through moelens hook points.

These objects are built outside the trace and shipped with it (by value, see
:func:`moelens.backends.nnsight.register_for_remote`), so they hold nnsight envoys (which travel as
references to the server's modules) and small tensors, never an ``nn.Module`` or a closure over the
local model. The edits reuse :class:`~moelens._interception.MoEHooks` and
:class:`~moelens._interception.LayerHooks` unchanged: the same code edits the same tensors as
``HookedMoE``, so the two backends agree bit for bit.

Module reads follow forward order (layer input, block input, router, block output, layer output),
as nnsight requires; a module is touched only when one of its hook points has functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._interception import LayerHooks, MoEHooks
from ..hook_points import CallContext, HookPoint, HookRegistry
from ..names import moe_name

__all__ = ["LayerStep", "Recorder", "TraceView", "build_steps", "intercept"]

_ROUTING = ("hook_router_logits", "hook_router_scores", "hook_topk_indices", "hook_topk_weights")


@dataclass
class TraceView:
    """What the intervention objects read from a model when they make their hooks (``cfg``,
    ``hook_names``, ``hook_point``), without the model: interventions expanded against it ship by
    value. During the call they read ``hook.call`` (attention mask, scratch), set up by
    :func:`intercept` on the server's side of the trace."""

    cfg: Any  # moelens.model.MoEConfig
    hook_names: frozenset[str]

    def hook_point(self, name: str) -> HookPoint:
        from ..errors import UnknownHookError
        from ..names import HOOK_TABLE, parse_hook_name

        if name not in self.hook_names:
            raise UnknownHookError(name, dict.fromkeys(self.hook_names))
        layer, suffix = parse_hook_name(name)
        return HookPoint(name, layer, HOOK_TABLE[suffix])


@dataclass
class LayerStep:
    """One decoder layer as the trace sees it: its envoys and the hook objects that edit them."""

    index: int
    layer: Any  # envoy of the decoder layer
    layer_hooks: LayerHooks
    block: Any = None  # envoy of the MoE block (None on dense layers)
    router: Any = None  # envoy of the router
    moe_hooks: MoEHooks | None = None


class Recorder:
    """A hook function that keeps what it sees (``store``: name -> tensor), moved to ``device``."""

    def __init__(self, device: str | torch.device | None = None):
        self.device = device
        self.store: dict[str, Tensor] = {}

    def __call__(self, tensor: Tensor, hook: HookPoint) -> None:
        value = tensor.detach()
        self.store[hook.name] = value.to(self.device) if self.device is not None else value


def intercept(steps: list[LayerStep], registry: HookRegistry, attention_mask: Tensor) -> None:
    """Run every active hook point on the live tensors of the trace, in forward order, within one
    call context (``hook.call``: the attention mask ``[batch pos]`` and the call's scratch)."""
    # What HookRegistry.calling does, spelled out: a @contextmanager method does not survive
    # nnsight's source-based serialisation of the functions a remote trace ships.
    context = CallContext(attention_mask)
    registry._state.stack.append(context)
    try:
        _intercept(steps, tuple(attention_mask.shape))
    finally:
        registry._state.stack.pop()
        context.scratch.clear()


def _intercept(steps: list[LayerStep], shape: tuple[int, int]) -> None:
    for step in steps:
        lh = step.layer_hooks
        if lh.resid_pre.active:
            args, kwargs = step.layer.inputs
            new = lh.edit_resid_pre(args, kwargs)
            if new is not None:
                step.layer.inputs = new
        moe = step.moe_hooks
        if moe is not None and any(point.active for point in moe.points.values()):
            moe.shape = shape
            if moe.active("hook_in"):
                args, kwargs = step.block.inputs
                new = moe.edit_input(args)
                if new is not None:
                    step.block.inputs = (new, kwargs)
            if moe.active(*_ROUTING):
                router_input = step.router.input
                output = step.router.output
                new = moe.edit_routing(step.router._module, router_input, output)
                if new is not None:
                    step.router.output = new
            if moe.active("hook_out"):
                output = step.block.output
                new = moe.edit_output(output)
                if new is not None:
                    step.block.output = new
        if lh.resid_post.active:
            output = step.layer.output
            new = lh.edit_resid_post(output)
            if new is not None:
                step.layer.output = new


def build_steps(layers: list, blocks: dict, routers: dict, registry: HookRegistry, spec, n_experts: int) -> list[LayerStep]:
    """Steps for every decoder layer: ``layers`` envoys in order, ``blocks``/``routers`` envoys by
    MoE layer index; the hook objects hold no module (they only read tensors they are given)."""
    from ..names import HOOK_TABLE, resid_name

    steps = []
    for index, layer in enumerate(layers):
        lh = LayerHooks(None, registry.points[resid_name(index, "pre")], registry.points[resid_name(index, "post")])
        step = LayerStep(index, layer, lh)
        if index in blocks:
            points = {
                suffix: registry.points[moe_name(index, suffix)]
                for suffix in HOOK_TABLE
                if moe_name(index, suffix) in registry.points
            }
            step.block, step.router = blocks[index], routers[index]
            step.moe_hooks = MoEHooks(spec, None, None, None, None, points, n_experts)
        steps.append(step)
    return steps
