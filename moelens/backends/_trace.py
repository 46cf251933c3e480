"""What runs *inside* an nnsight trace: HF's own tensors through moelens hook points.

These objects are built outside the trace and shipped with it (by value, see
:func:`moelens.backends.nnsight.register_for_remote`), so they hold nnsight envoys (which travel as
references to the server's modules) and small tensors, never an ``nn.Module`` or a closure over the
local model. The edits reuse :class:`~moelens._interception.MoEHooks` and
:class:`~moelens._interception.LayerHooks` unchanged: the same code edits the same tensors as
``HookedMoE``, so the two backends agree bit for bit.

Module reads follow forward order (embedding, then per layer: layer input, attention output, pre-MLP
norm input, block input, router, experts, shared experts, block output, layer output; then the final
norm), as nnsight requires; a module is touched only when one of its hook points has functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._interception import LayerHooks, MoEHooks
from .._stream_hooks import ModelStreamHooks, StreamHooks, replace_output
from ..hook_points import CallContext, HookPoint, HookRegistry
from ..names import HOOK_TABLE, hook_name, moe_name

__all__ = ["LayerStep", "Recorder", "TraceEnvoys", "TraceView", "build_steps", "intercept", "point_rows"]

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
        from ..names import parse_hook_name

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
    stream: StreamHooks  # hook_attn_out, hook_resid_mid, hook_mlp_out (holds no module here)
    attention: Any = None  # envoys of the attention, the pre-MLP norm and the MLP or MoE block
    mlp_norm: Any = None
    mlp: Any = None
    router: Any = None  # envoys of the router, experts and shared experts (MoE layers)
    experts: Any = None
    shared: Any = None
    moe_hooks: MoEHooks | None = None


@dataclass
class TraceEnvoys:
    """The envoys a trace edits, found once per model by module identity (HF modules -> envoys)."""

    embed: Any
    final_norm: Any
    layers: list
    attention: list
    mlp_norm: list
    mlp: list
    routers: dict  # MoE layer -> envoy
    experts: dict
    shared: dict  # MoE layers with shared experts only

    @classmethod
    def collect(cls, nn_model: Any, hf_model: Any, spec: Any, moe_layers: tuple[int, ...]) -> TraceEnvoys:
        from ..architectures import resolve

        by_id = {id(envoy._module): envoy for envoy in nn_model.modules()}
        layers = list(resolve(hf_model, spec.layers))
        blocks = {index: resolve(layers[index], spec.moe_block) for index in moe_layers}
        shared = {i: resolve(b, spec.shared_experts) for i, b in blocks.items()} if spec.shared_experts else {}
        return cls(
            embed=by_id[id(hf_model.get_input_embeddings())],
            final_norm=by_id[id(resolve(hf_model, spec.final_norm))],
            layers=[by_id[id(layer)] for layer in layers],
            attention=[by_id[id(resolve(layer, spec.attention))] for layer in layers],
            mlp_norm=[by_id[id(resolve(layer, spec.mlp_norm))] for layer in layers],
            mlp=[by_id[id(resolve(layer, spec.moe_block))] for layer in layers],
            routers={i: by_id[id(resolve(b, spec.router))] for i, b in blocks.items()},
            experts={i: by_id[id(resolve(b, spec.experts))] for i, b in blocks.items()},
            shared={i: by_id[id(module)] for i, module in shared.items() if module is not None},
        )


def point_rows(spec: Any, n_layers: int, moe_layers: tuple[int, ...], shared_layers: Any) -> list[tuple]:
    """``(layer, name, row)`` of every hook point, in ``HookedMoE``'s forward order."""
    def row(layer: int | None, suffix: str) -> tuple:
        return layer, hook_name(layer, suffix), HOOK_TABLE[suffix]

    rows = [row(None, "hook_embed")]
    for index in range(n_layers):
        rows += [row(index, s) for s in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid")]
        if index in moe_layers:
            for suffix, spec_row in HOOK_TABLE.items():
                if spec_row.scope in ("model", "layer") or (spec_row.scope == "shared" and index not in shared_layers):
                    continue
                if suffix == "hook_expert_out" and spec.experts_layout != "fused":
                    continue
                rows.append(row(index, suffix))
        rows += [row(index, s) for s in ("hook_mlp_out", "hook_resid_post")]
    return [*rows, row(None, "ln_final.hook_normalized")]


class Recorder:
    """A hook function that keeps what it sees (``store``: name -> tensor), moved to ``device``."""

    def __init__(self, device: str | torch.device | None = None):
        self.device = device
        self.store: dict[str, Tensor] = {}

    reads_only = True  # records, edits nothing (moelens._finite)

    def __call__(self, tensor: Tensor, hook: HookPoint) -> None:
        value = tensor.detach()
        self.store[hook.name] = value.to(self.device) if self.device is not None else value


def intercept(steps: list[LayerStep], ends: ModelStreamHooks, envoys: TraceEnvoys, registry: HookRegistry,
              attention_mask: Tensor) -> None:
    """Run every active hook point on the live tensors of the trace, in forward order, within one
    call context (``hook.call``: the attention mask ``[batch pos]`` and the call's scratch)."""
    # What HookRegistry.calling does, spelled out: a @contextmanager method does not survive
    # nnsight's source-based serialisation of the functions a remote trace ships.
    context = CallContext(attention_mask)
    registry._state.stack.append(context)
    try:
        shape = tuple(attention_mask.shape)
        _edit_output(envoys.embed, ends.points["hook_embed"], shape)
        _intercept(steps, shape)
        _edit_output(envoys.final_norm, ends.points["ln_final.hook_normalized"], shape)
    finally:
        registry._state.stack.pop()
        context.scratch.clear()


def _edit_output(envoy: Any, point: HookPoint, shape: tuple[int, int], output: Any = None) -> Any:
    """Pass ``envoy.output`` through ``point`` and write an edit back; returns the (new) output."""
    if not point.active:
        return output
    output = envoy.output if output is None else output
    new = replace_output(point, output, shape)
    if new is not None:
        envoy.output = output = new
    return output


def _intercept(steps: list[LayerStep], shape: tuple[int, int]) -> None:
    for step in steps:
        lh, st = step.layer_hooks, step.stream
        if lh.resid_pre.active:
            args, kwargs = step.layer.inputs
            new = lh.edit_resid_pre(args, kwargs)
            if new is not None:
                step.layer.inputs = new
        _edit_output(step.attention, st.points["hook_attn_out"], shape)
        if st.points["hook_resid_mid"].active:
            args, _ = step.mlp_norm.inputs
            st._mid_pre(None, args)  # an edit is written into the tensor itself, as in HookedMoE
        moe = step.moe_hooks
        block_output = None
        if moe is not None and any(point.active for point in moe.points.values()):
            moe.shape = shape
            block_output = _intercept_moe(step, moe)
        _edit_output(step.mlp, st.points["hook_mlp_out"], shape, block_output)
        if lh.resid_post.active:
            output = step.layer.output
            new = lh.edit_resid_post(output)
            if new is not None:
                step.layer.output = new


def _intercept_moe(step: LayerStep, moe: MoEHooks) -> Any:
    """The MoE block's hook points in forward order; returns the block's output when it was read."""
    if moe.active("hook_in"):
        args, kwargs = step.mlp.inputs
        new = moe.edit_input(args)
        if new is not None:
            step.mlp.inputs = (new, kwargs)
    shared = moe.active("hook_shared_out") and step.shared is not None
    if shared and moe.spec.shared_first:
        step.shared.output = moe._shared_post(None, (), step.shared.output)
    if moe.active(*_ROUTING):
        router_input = step.router.input
        output = step.router.output
        new = moe.edit_routing(step.router._module, router_input, output)
        if new is not None:
            step.router.output = new
    if moe.active("hook_expert_out"):
        args, kwargs = step.experts.inputs
        output = step.experts.output
        # the per-slot rerun calls the experts envoy: nnsight runs it ad hoc, outside the trace's order
        new = moe._experts_post(_Forward(step.experts), args, kwargs, output)
        if new is not None:
            step.experts.output = new
    if shared and not moe.spec.shared_first:
        step.shared.output = moe._shared_post(None, (), step.shared.output)
    if moe.active("hook_out"):
        output = step.mlp.output
        new = moe.edit_output(output)
        if new is not None:
            step.mlp.output = output = new
        return output
    return None


class _Forward:
    """An envoy seen as a module with ``forward`` (what MoEHooks._experts_post calls)."""

    def __init__(self, envoy: Any):
        self.forward = envoy


def build_steps(envoys: TraceEnvoys, registry: HookRegistry, spec: Any, n_experts: int) -> tuple[list[LayerStep], ModelStreamHooks]:
    """Steps for every decoder layer, and the once-per-model points; the hook objects hold no module
    (they only read tensors they are given)."""
    points = registry.points
    ends = ModelStreamHooks(None, None, {s: points[s] for s in ("hook_embed", "ln_final.hook_normalized")})
    steps = []
    for index, layer in enumerate(envoys.layers):
        lh = LayerHooks(None, points[hook_name(index, "hook_resid_pre")], points[hook_name(index, "hook_resid_post")])
        stream = StreamHooks(None, None, None, {s: points[hook_name(index, s)] for s in ("hook_attn_out", "hook_resid_mid", "hook_mlp_out")})
        step = LayerStep(index, layer, lh, stream, envoys.attention[index], envoys.mlp_norm[index], envoys.mlp[index])
        if index in envoys.routers:
            moe_points = {suffix: points[moe_name(index, suffix)] for suffix in HOOK_TABLE if moe_name(index, suffix) in points}
            step.router, step.experts, step.shared = envoys.routers[index], envoys.experts[index], envoys.shared.get(index)
            step.moe_hooks = MoEHooks(spec, None, None, None, None, moe_points, n_experts)
        steps.append(step)
    return steps, ends
