"""Torch hooks that route HF's own tensors through moelens hook points.

Nothing here replaces an HF module or its forward. For each call of the wrapped model, only the torch
hooks that some active hook point needs are installed, and they are removed when the call ends: with
no active hook point the HF forward runs untouched. Router edits are detected by comparing against a
copy (router tensors are small), so that in-place edits re-route too; large activations (residual
stream, block outputs) are replaced only when a hook returns a new tensor, and in-place edits of them
propagate by themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ._torch_hooks import own_hook
from .architectures.registry import resolve
from .architectures.spec import ArchitectureSpec, RouterOutput
from .errors import HookShapeError, ReadOnlyHookError
from .hook_points import HookPoint
from .names import HOOK_TABLE, hook_name

__all__ = ["LayerHooks", "MoEHooks", "StopForward", "build_hook_points"]


class StopForward(Exception):
    """Raised inside the forward to return the residual stream early (``stop_at_layer``)."""

    def __init__(self, resid: Tensor):
        super().__init__("stop_at_layer reached")
        self.resid = resid


def _first_arg(args: tuple, kwargs: dict, name: str) -> Tensor:
    return args[0] if args else kwargs[name]


def _replace_first_arg(args: tuple, kwargs: dict, name: str, value: Tensor) -> tuple[tuple, dict]:
    if args:
        return (value, *args[1:]), kwargs
    return args, {**kwargs, name: value}


class LayerHooks:
    """Residual-stream hook points of one decoder layer, plus the start/stop machinery."""

    def __init__(self, layer: nn.Module, resid_pre: HookPoint, resid_post: HookPoint):
        self.layer = layer
        self.resid_pre = resid_pre
        self.resid_post = resid_post

    def install(self, stack: ExitStack, *, skip: bool = False, stop: bool = False) -> None:
        if skip:
            # start_at_layer: the layers before the start pass the given residual stream through
            # unchanged, and none of their hooks fire.
            stack.enter_context(_patched_forward(self.layer, lambda hidden_states, *a, **k: hidden_states))
            return
        if stop or self.resid_pre.active:
            own_hook(stack, self.layer, self._pre(stop), pre=True, with_kwargs=True)
        if self.resid_post.active:
            own_hook(stack, self.layer, self._post)

    # The edits take tensors, never a module: the torch hooks below and the nnsight trace
    # (moelens.backends._trace) both call them. None means "unchanged".
    def edit_resid_pre(self, args: tuple, kwargs: dict, stop: bool = False) -> tuple[tuple, dict] | None:
        """New ``(args, kwargs)`` of the decoder layer after ``hook_resid_pre``, or None."""
        resid = _first_arg(args, kwargs, "hidden_states")
        new = self.resid_pre(resid) if self.resid_pre.active else resid
        if stop:
            raise StopForward(new)
        return None if new is resid else _replace_first_arg(args, kwargs, "hidden_states", new)

    def edit_resid_post(self, output: Any) -> Any:
        """The decoder layer's new output after ``hook_resid_post``, or None."""
        resid = output[0] if isinstance(output, tuple) else output
        new = self.resid_post(resid)
        if new is resid:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    def _pre(self, stop: bool) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
            return self.edit_resid_pre(args, kwargs, stop)

        return hook

    def _post(self, module: nn.Module, args: tuple, output: Any) -> Any:
        return self.edit_resid_post(output)


class MoEHooks:
    """The MoE hook points of one layer and the torch hooks on its block, router, experts, shared experts."""

    def __init__(
        self,
        spec: ArchitectureSpec,
        block: nn.Module,
        router: nn.Module,
        experts: nn.Module,
        shared: nn.Module | None,
        points: dict[str, HookPoint],
        n_experts: int,
    ):
        self.spec = spec
        self.block, self.router, self.experts, self.shared = block, router, experts, shared
        self.points = points  # suffix -> HookPoint
        self.n_experts = n_experts
        self.shape: tuple[int, int] = (0, 0)  # (batch, pos) of the current call

    def active(self, *suffixes: str) -> bool:
        """Whether any of these hook points (``"hook_in"``, ...) has a hook or is cached."""
        return any(s in self.points and self.points[s].active for s in suffixes)

    _active = active

    def install(self, stack: ExitStack) -> None:
        routing = ("hook_router_logits", "hook_router_scores", "hook_topk_indices", "hook_topk_weights")
        wants = {
            "router": self._active(*routing),
            "experts": self._active("hook_expert_out"),
            "shared": self._active("hook_shared_out"),
            "out": self._active("hook_out"),
        }
        if not (any(wants.values()) or self._active("hook_in")):
            return
        # The block's input gives (batch, pos) to un-flatten the router's and experts' tensors.
        own_hook(stack, self.block, self._block_pre, pre=True)
        if wants["router"]:
            own_hook(stack, self.router, self._router_post)
        if wants["experts"]:
            own_hook(stack, self.experts, self._experts_post, with_kwargs=True)
        if wants["shared"] and self.shared is not None:
            own_hook(stack, self.shared, self._shared_post)
        if wants["out"]:
            own_hook(stack, self.block, self._block_post)

    # -- block input and output ---------------------------------------------------------------
    def _block_pre(self, module: nn.Module, args: tuple) -> Any:
        return self.edit_input(args)

    def _block_post(self, module: nn.Module, args: tuple, output: Any) -> Any:
        return self.edit_output(output)

    def _router_post(self, module: nn.Module, args: tuple, output: Any) -> Any:
        return self.edit_routing(module, args[0], output)

    def edit_input(self, args: tuple) -> tuple | None:
        """The MoE block's new positional args after ``hook_in`` (records ``(batch, pos)``), or None."""
        hidden = args[0]
        self.shape = (hidden.shape[0], hidden.shape[1])
        point = self.points["hook_in"]
        if not point.active:
            return None
        new = point(hidden)
        return None if new is hidden else (new, *args[1:])

    def edit_output(self, output: Any) -> Any:
        """The MoE block's new output after ``hook_out``, or None."""
        hidden = output[0] if self.spec.moe_returns_tuple else output
        batch, pos = self.shape
        view = hidden.view(batch, pos, hidden.shape[-1])  # some blocks return [tokens d]
        new = self.points["hook_out"](view)
        if new is view:
            return None
        new = new.reshape(hidden.shape)
        return (new, *output[1:]) if self.spec.moe_returns_tuple else new

    def _shared_post(self, module: nn.Module, args: tuple, output: Tensor) -> Any:
        batch, pos = self.shape
        view = output.view(batch, pos, output.shape[-1])  # [tokens d] or [batch pos d] -> [batch pos d]
        new = self.points["hook_shared_out"](view)
        # Return a copy: some blocks add the routed output into the shared output in place
        # (Llama-4's out.add_), which would otherwise rewrite what the hooks and the cache saw.
        return new.reshape(output.shape).clone()

    # -- routing ------------------------------------------------------------------------------
    def edit_routing(self, router: nn.Module, router_input: Tensor, output: Any) -> Any:
        """The router's new output after the routing hook points (logits, scores, top-k), or None."""
        found = self.spec.router_io.unpack(output, router_input, router)
        batch, pos = self.shape
        logits, weights, index = found
        k = index.shape[1]
        points = self.points
        logits, rerouted = self._edit_small(points["hook_router_logits"], logits, (batch, pos, logits.shape[-1]))
        routing = None
        if rerouted or points["hook_router_scores"].active:
            routing = self.spec.routing.route(logits, router)
        if points["hook_router_scores"].active:
            scores = routing.scores.view(batch, pos, -1)
            kept = scores.clone()
            points["hook_router_scores"](scores)
            if not _same(scores, kept):  # NaN-aware: a NaN from upstream is not the hook's edit
                raise ReadOnlyHookError(
                    f"a hook edited {points['hook_router_scores'].name!r} in place, but it is read-only. "
                    "Edit hook_router_logits of the same layer to re-route instead."
                )
        if rerouted:
            weights = routing.weights.to(found.weights.dtype)
            index = routing.index
        index, index_changed = self._edit_small(points["hook_topk_indices"], index, (batch, pos, k))
        if index_changed:
            self._check_index(index)
        weights, weights_changed = self._edit_small(points["hook_topk_weights"], weights, (batch, pos, k))
        if not (rerouted or index_changed or weights_changed):
            return None
        return self.spec.router_io.pack(output, RouterOutput(logits, weights, index))

    @staticmethod
    def _edit_small(point: HookPoint, tensor: Tensor, shape: tuple[int, ...]) -> tuple[Tensor, bool]:
        """Run a small routing tensor through its hook point. An edit is a returned tensor (even with
        equal values: it may carry gradients) or an in-place change, found by comparing with a copy."""
        if not point.active:
            return tensor, False
        before, view = tensor.clone(), tensor.view(shape)
        returned = point(view)
        edited = returned.reshape(tensor.shape)
        changed = returned is not view or not torch.equal(edited, before)
        return (edited if changed else before), changed

    def _check_index(self, index: Tensor) -> None:
        """An edited top-k choice must name k distinct experts in range. The same expert in two slots is
        refused: families disagree on it (a fused kernel runs the expert twice and adds both weights, a
        one-hot dispatch runs it once), so no single meaning exists; to give an expert more weight,
        edit ``hook_topk_weights``. Checked only after an edit, with one device sync for both checks."""
        bad = (index < 0) | (index >= self.n_experts)
        ordered = index.sort(-1).values
        twice = ordered[..., 1:] == ordered[..., :-1]
        if bool(bad.any() | twice.any()):
            name = self.points["hook_topk_indices"].name
            if bool(bad.any()):
                raise HookShapeError(
                    f"a hook on {name!r} selected expert {int(index[bad][0])}; expert indices must lie in "
                    f"[0, {self.n_experts - 1}]."
                )
            raise HookShapeError(
                f"a hook on {name!r} put expert {int(ordered[..., 1:][twice][0])} in two top-k slots of one token; "
                "each slot needs a different expert. To give an expert more weight, edit hook_topk_weights."
            )

    # -- experts ------------------------------------------------------------------------------
    def _experts_post(self, module: nn.Module, args: tuple, kwargs: dict, output: Tensor) -> Any:
        hidden = args[0] if args else kwargs["hidden_states"]
        index = args[1] if len(args) > 1 else kwargs["top_k_index"]
        weights = args[2] if len(args) > 2 else kwargs["top_k_weights"]
        batch, pos = self.shape
        n_tokens, k = index.shape
        # Each (token, slot) pair becomes its own row with weight 1: HF's own kernel then returns the
        # unweighted output of every selected expert. [tokens d] -> [tokens*k d]
        rows = hidden.repeat_interleave(k, dim=0)
        ones = torch.ones(n_tokens * k, 1, dtype=weights.dtype, device=weights.device)
        per_slot = module.forward(rows, index.reshape(n_tokens * k, 1), ones)
        per_slot = per_slot.view(batch, pos, k, -1)  # [tokens*k d] -> [batch pos k d]
        before = per_slot.clone()
        point = self.points["hook_expert_out"]
        edited = point(per_slot)
        if not point.has_bwd and torch.equal(edited, before):
            return None  # read only: HF's own output stands (a backward hook needs the mixed path)
        # [batch pos k d] weighted by [batch pos k] -> [tokens d]
        mixed = (edited.float() * weights.view(batch, pos, k, 1).float()).sum(dim=2)
        return mixed.reshape(n_tokens, -1).to(output.dtype)


@contextmanager
def _patched_forward(module: nn.Module, forward: Callable):
    module.forward = forward  # an instance attribute shadows the class's forward
    try:
        yield
    finally:
        del module.forward


def build_hook_points(
    layers: Sequence[nn.Module],
    spec: ArchitectureSpec,
    moe_layers: tuple[int, ...],
    n_experts: int,
    embed: nn.Module,
    final_norm: nn.Module,
) -> tuple[list[HookPoint], list[LayerHooks], list[MoEHooks], list]:
    """Every hook point of a model in forward order, with the interception of each layer, MoE block
    and stream point (:mod:`moelens._stream_hooks`: the model's first, then one per layer)."""
    from ._stream_hooks import ModelStreamHooks, StreamHooks

    def point(layer: int | None, suffix: str) -> HookPoint:
        return HookPoint(hook_name(layer, suffix), layer, HOOK_TABLE[suffix])

    ends = {suffix: point(None, suffix) for suffix in ("hook_embed", "ln_final.hook_normalized")}
    points: list[HookPoint] = [ends["hook_embed"]]
    layer_hooks: list[LayerHooks] = []
    moe_hooks: list[MoEHooks] = []
    stream_hooks: list = [ModelStreamHooks(embed, final_norm, ends)]
    for index, layer in enumerate(layers):
        stream = {suffix: point(index, suffix) for suffix in ("hook_attn_out", "hook_resid_mid", "hook_mlp_out")}
        pre, post = point(index, "hook_resid_pre"), point(index, "hook_resid_post")
        layer_hooks.append(LayerHooks(layer, pre, post))
        block = resolve(layer, spec.moe_block)
        stream_hooks.append(StreamHooks(resolve(layer, spec.attention), resolve(layer, spec.mlp_norm), block, stream))
        points.extend([pre, stream["hook_attn_out"], stream["hook_resid_mid"]])
        if index in moe_layers:
            shared = resolve(block, spec.shared_experts) if spec.shared_experts else None
            moe_points = {}
            for suffix, row in HOOK_TABLE.items():
                if row.scope in ("model", "layer") or (row.scope == "shared" and shared is None):
                    continue
                if suffix == "hook_expert_out" and spec.experts_layout != "fused":
                    continue  # per-slot outputs need HF's fused (hidden, index, weights) experts call
                moe_points[suffix] = point(index, suffix)
            router, experts = resolve(block, spec.router), resolve(block, spec.experts)
            moe_hooks.append(MoEHooks(spec, block, router, experts, shared, moe_points, n_experts))
            points.extend(moe_points.values())
        points.extend([stream["hook_mlp_out"], post])
    points.append(ends["ln_final.hook_normalized"])
    return points, layer_hooks, moe_hooks, stream_hooks


def _same(a: Tensor, b: Tensor) -> bool:
    """``torch.equal`` that counts NaN == NaN (and keeps the bit-exact comparison otherwise)."""
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())
