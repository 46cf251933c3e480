"""Named hook points, the per-call context their functions see, and the verbs that attach them.

A :class:`HookPoint` is not an ``nn.Module``: moelens never copies or rewraps HF modules. The model
intercepts HF's own tensors (router outputs, expert inputs, block inputs and outputs) and passes them
through the hook point of the same name, which runs the user's functions in order. A forward function
takes ``(tensor, hook)`` and returns None (read, or edit in place) or a tensor of the same shape and
dtype that replaces the activation. A backward function takes ``(grad, hook)``: ``grad`` is the
gradient of whatever is differentiated later with respect to the activation (after every forward
edit), and a returned tensor replaces that gradient upstream.

During a model call, ``hook.call`` is the call's :class:`CallContext` (its attention mask and a
scratch dict shared by all hook points) and ``hook.ctx`` a scratch dict of this hook point alone
(TransformerLens's ``hook.ctx``); both are emptied when the call ends, also when it raises.

Threads: the hook functions, the call context and the torch hooks of a call belong to the model, not
to a thread. A model therefore serves one thread at a time: while one thread is inside a call or a
``hooks()``/``intervene()`` block, any other thread's call raises :class:`ConcurrentUseError`
(it would otherwise run with the first thread's hooks). Use one model per thread, or a lock.
"""

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import torch
from torch import Tensor

from ._checks import hook_pair
from ._finite import check_edit
from .errors import (
    ConcurrentUseError,
    HookShapeError,
    InterventionError,
    InvalidInputError,
    ReadOnlyHookError,
    UnknownHookError,
)
from .names import HookSpec

__all__ = ["CallContext", "HookFn", "HookPoint", "HookRegistry", "NameFilter", "expand"]

HookFn = Callable[..., Tensor | None]
NameFilter = Union[str, Iterable[str], Callable[[str], bool], None]
# Activations with no gradient to take: integer indices, and scores that nothing downstream reads.
NO_GRADIENT = ("hook_topk_indices", "hook_router_scores")


@dataclass
class CallContext:
    """What the hook functions of one model call share.

    ``attention_mask [batch pos]`` is the call's mask (1 on real tokens; None outside a call);
    ``scratch`` is a dict for passing values between hook points of the same call (e.g. the
    top-k indices a weights hook needs), emptied when the call ends.

    >>> from moelens import HookedMoE
    >>> from moelens.testing import tiny_model
    >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
    >>> seen = []
    >>> def read_mask(x, hook):
    ...     seen.append(hook.call.attention_mask.tolist())
    >>> _ = model.run_with_hooks(torch.tensor([[4, 5, 0]]), [("blocks.0.moe.hook_out", read_mask)],
    ...                          attention_mask=torch.tensor([[1, 1, 0]]))
    >>> seen
    [[[1, 1, 0]]]
    """

    attention_mask: Tensor | None = None
    scratch: dict[Any, Any] = field(default_factory=dict)
    # Activations handed to backward functions during this call, for run_with_cache(incl_bwd=True).
    grad_targets: dict[str, Tensor] = field(default_factory=dict)


class _CallState:
    """The call in progress of one model, shared by all its hook points (a stack: calls may nest),
    and the thread that owns the model while a call or a hooks block is open."""

    def __init__(self) -> None:
        self.stack: list[CallContext] = []
        self.idle = CallContext()
        self.lock = threading.RLock()  # re-entrant: the owning thread may nest calls and blocks
        self.owner = ""
        self.check_finite = True  # moelens._finite: returned NaN/inf raise (model.check_finite)

    def __reduce__(self) -> tuple:
        return (_CallState, ())  # a copied or pickled model starts idle, with its own lock

    @property
    def current(self) -> CallContext:
        return self.stack[-1] if self.stack else self.idle

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Own the model for this thread for the block; another thread inside raises (one
        non-blocking lock acquisition per call or block, nothing per hook call)."""
        if not self.lock.acquire(blocking=False):
            raise ConcurrentUseError(
                f"this HookedMoE is in use by thread {self.owner!r} (inside a call or a hooks()/intervene() "
                f"block), and thread {threading.current_thread().name!r} called it too. Hooks and interventions "
                "belong to the model, so this call would run with the other thread's hooks. Give each thread "
                "its own model, or serialise the calls with a threading.Lock."
            )
        previous, self.owner = self.owner, threading.current_thread().name
        try:
            yield
        finally:
            self.owner = previous
            self.lock.release()


class LayerIndex(int):
    """A layer index that TransformerLens code may also call: ``hook.layer == 3`` and ``hook.layer() == 3``.

    >>> LayerIndex(3)() + LayerIndex(3)
    6
    """

    def __call__(self) -> int:
        return int(self)


class HookPoint:
    """One named activation. ``hook.name``, ``hook.layer`` (an int; ``hook.layer()`` as in
    TransformerLens works too) and ``hook.spec`` describe it.

    >>> from moelens.names import HOOK_TABLE
    >>> hp = HookPoint("blocks.0.moe.hook_out", 0, HOOK_TABLE["hook_out"])
    >>> _ = hp.add(lambda x, hook: x * 2)
    >>> hp(torch.ones(1, 2, 3)).sum().item()
    12.0
    """

    __slots__ = ("_ctx", "_running", "_state", "bwd_fns", "fns", "layer", "name", "spec")

    def __init__(self, name: str, layer: int, spec: HookSpec):
        self.name = name
        self.layer = LayerIndex(layer) if isinstance(layer, int) else layer
        self.spec = spec
        self.fns: list[HookFn] = []
        self.bwd_fns: list[HookFn] = []
        self._state = _CallState()  # replaced by the registry's, shared by every point of a model
        self._ctx: dict[Any, Any] = {}
        self._running = False  # a function of this point is running: a second entry is a model call inside a hook

    @property
    def active(self) -> bool:
        return bool(self.fns or self.bwd_fns)

    @property
    def has_bwd(self) -> bool:
        """Whether a backward function is attached (the activation then enters the autograd graph)."""
        return bool(self.bwd_fns)

    @property
    def call(self) -> CallContext:
        """The context of the model call in progress (see :class:`CallContext`)."""
        return self._state.current

    @property
    def ctx(self) -> dict[Any, Any]:
        """This hook point's scratch dict for the call in progress, emptied when the call ends.

        >>> from moelens import HookedMoE
        >>> from moelens.testing import tiny_model
        >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
        >>> def count(x, hook):
        ...     hook.ctx["calls"] = hook.ctx.get("calls", 0) + 1
        >>> _ = model.run_with_hooks(torch.tensor([[4, 5]]), [("blocks.0.moe.hook_out", count)])
        >>> model.hook_point("blocks.0.moe.hook_out").ctx  # emptied at the end of the call
        {}
        """
        return self._ctx

    def add(self, fn: HookFn, dir: Literal["fwd", "bwd"] = "fwd") -> Callable[[], None]:
        """Attach ``fn`` (forward, or backward with ``dir="bwd"``); returns a function that detaches it."""
        if not callable(fn):
            raise InvalidInputError(f"hook for {self.name!r} is {fn!r}, not a function (tensor, hook) -> tensor | None.")
        if dir == "bwd":
            if self.name.rsplit(".", 1)[-1] in NO_GRADIENT:
                raise InvalidInputError(
                    f"{self.name!r} carries no gradient (integer indices, or scores nothing downstream reads); "
                    "attach backward hooks to hook_router_logits or hook_topk_weights of the same layer."
                )
            fns = self.bwd_fns
        elif dir == "fwd":
            fns = self.fns
        else:
            raise InvalidInputError(f"dir={dir!r}: pass 'fwd' or 'bwd'.")
        fns.append(fn)
        return lambda: fns.remove(fn) if fn in fns else None

    def __call__(self, tensor: Tensor) -> Tensor:
        """Run every forward function in order; returns the (possibly replaced) activation, entered
        into the autograd graph with the backward functions when there are any."""
        if self.fns:
            tensor = self._run_fns(tensor)
        if self.bwd_fns and torch.is_grad_enabled() and tensor.is_floating_point():
            tensor = self._attach_backward(tensor)
        return tensor

    def _run_fns(self, tensor: Tensor) -> Tensor:
        if self._running:  # without this, a hook calling the model recurses 1,000 frames deep
            raise InvalidInputError(
                f"a hook on {self.name!r} called the model, which ran that hook again (a model call inside a hook "
                "re-enters every hook). Run the inner call outside the hook, e.g. before the hooked call, and pass "
                "its result to the hook through a closure."
            )
        self._running = True
        try:
            for fn in list(self.fns):
                result = fn(tensor, hook=self)
                if result is None or result is tensor:
                    continue
                if not self.spec.writable:
                    raise ReadOnlyHookError(
                        f"hook {self.name!r} is read-only ({self.spec.doc}), but {_fn_name(fn)} returned a "
                        f"value. Edit blocks.{self.layer}.moe.hook_router_logits to re-route instead."
                    )
                tensor = self._check(result, tensor, fn)
                if self._state.check_finite:
                    check_edit(self.name, _fn_name(fn), tensor)
        finally:
            self._running = False
        return tensor

    def _attach_backward(self, tensor: Tensor) -> Tensor:
        # A new node (an identity view, or + a zero leaf when nothing upstream needs gradients) whose
        # gradient is this activation's: it is what flows downstream from here on.
        if tensor.requires_grad:
            tensor = tensor.view_as(tensor)
        else:
            tensor = tensor + torch.zeros((), dtype=tensor.dtype, device=tensor.device, requires_grad=True)
        fns = list(self.bwd_fns)

        def backward(grad: Tensor) -> Tensor:
            for fn in fns:
                result = fn(grad, hook=self)
                if result is not None:
                    grad = self._check(result, grad, fn)
            return grad

        tensor.register_hook(backward)
        self.call.grad_targets[self.name] = tensor
        return tensor

    def _check(self, result: Any, original: Tensor, fn: HookFn) -> Tensor:
        if not isinstance(result, Tensor):
            raise HookShapeError(
                f"hook {_fn_name(fn)} on {self.name!r} returned {type(result).__name__}; return None or a "
                f"tensor of shape {tuple(original.shape)} [{self.spec.shape}]."
            )
        if result.shape != original.shape:
            raise HookShapeError(
                f"hook {_fn_name(fn)} on {self.name!r} returned shape {tuple(result.shape)}; expected "
                f"{tuple(original.shape)} [{self.spec.shape}]."
            )
        if result.dtype != original.dtype:
            raise HookShapeError(
                f"hook {_fn_name(fn)} on {self.name!r} returned dtype {result.dtype}; expected "
                f"{original.dtype}. Return `value.to({original.dtype})`."
            )
        if result.device != original.device:
            if result.is_meta:  # shape and dtype only, no values: nothing downstream can run on it
                raise HookShapeError(
                    f"hook {_fn_name(fn)} on {self.name!r} returned a meta tensor (shape and dtype, no data); "
                    f"return a tensor with values on {original.device}, e.g. built with torch.zeros_like(x)."
                )
            result = result.to(original.device)
        return result

    def __repr__(self) -> str:
        return f"HookPoint({self.name!r}, {len(self.fns)} fn, {len(self.bwd_fns)} bwd fn)"


def _fn_name(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


Hooks = Iterable[tuple[str | Callable[[str], bool], HookFn]]


class HookRegistry:
    """The hook points of one model, by name, the verbs that attach functions to them, and the
    context of the call in progress."""

    def __init__(self, points: Iterable[HookPoint]):
        self.points: dict[str, HookPoint] = {hp.name: hp for hp in points}
        self._state = _CallState()
        for hp in self.points.values():
            hp._state = self._state

    def __getitem__(self, name: str) -> HookPoint:
        try:
            return self.points[name]
        except KeyError:
            raise UnknownHookError(name, self.points) from None

    def select(self, name_filter: NameFilter) -> list[HookPoint]:
        """Hook points matching a name, a list of names, a predicate, or everything (None)."""
        if name_filter is None:
            return list(self.points.values())
        if isinstance(name_filter, str):
            return [self[name_filter]]
        if callable(name_filter):
            return [hp for name, hp in self.points.items() if name_filter(name)]
        if not isinstance(name_filter, Iterable) or not all(isinstance(name, str) for name in name_filter):
            raise InvalidInputError(f"names_filter={name_filter!r}: pass a hook name, a list of names, a predicate "
                                    "(lambda name: ...), or None for every hook point (`model.hook_names` lists them).")
        return [self[name] for name in name_filter]

    @property
    def call(self) -> CallContext:
        return self._state.current

    def exclusive(self):
        """Context manager: this thread owns the model for the block (see the module docstring)."""
        return self._state.exclusive()

    @contextmanager
    def calling(self, context: CallContext) -> Iterator[CallContext]:
        """Make ``context`` the call in progress for the block; empty every scratch dict on exit."""
        with self._state.exclusive():
            yield from self._calling(context)

    def _calling(self, context: CallContext) -> Iterator[CallContext]:
        self._state.stack.append(context)
        try:
            yield context
        finally:
            self._state.stack.pop()
            context.scratch.clear()
            if not self._state.stack:
                for hp in self.points.values():
                    hp._ctx.clear()

    @contextmanager
    def attached(self, fwd_hooks: Hooks = (), bwd_hooks: Hooks = ()) -> Iterator[None]:
        """Attach ``(name_or_predicate, fn)`` pairs for the duration of the block, removing them on exit,
        also when the block raises."""
        with self._state.exclusive():
            yield from self._attached(fwd_hooks, bwd_hooks)

    def _attached(self, fwd_hooks: Hooks, bwd_hooks: Hooks) -> Iterator[None]:
        detach: list[Callable[[], None]] = []
        try:
            for direction, pairs in (("fwd", fwd_hooks), ("bwd", bwd_hooks)):
                for pair in pairs:
                    target, fn = hook_pair(pair, direction)
                    if not callable(fn):
                        raise InvalidInputError(
                            f"hook for {target!r} is {fn!r}, not a function (tensor, hook) -> tensor | None."
                        )
                    detach.extend(hp.add(fn, direction) for hp in self.select(target))
            yield
        finally:
            for undo in reversed(detach):
                undo()

    def remove_all(self) -> None:
        with self._state.exclusive():
            self._remove_all()

    def _remove_all(self) -> None:
        for hp in self.points.values():
            hp.fns.clear()
            hp.bwd_fns.clear()


def expand(items: Any, model: Any) -> list[tuple]:
    """Turn a list mixing hook-producing objects (anything with ``.hooks(model)``, e.g. the
    interventions) and ``(name, fn)`` pairs into ``(name, fn)`` pairs, in order.

    >>> from moelens import HookedMoE, Ablate
    >>> from moelens.testing import tiny_model
    >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
    >>> [name for name, fn in expand([Ablate(0, 1), ("blocks.1.moe.hook_out", print)], model)]
    ['blocks.0.moe.hook_router_logits', 'blocks.1.moe.hook_out']
    """
    if callable(getattr(items, "hooks", None)):
        items = [items]
    pairs: list[tuple] = []
    for item in items:
        if callable(getattr(item, "hooks", None)):
            pairs.extend(item.hooks(model))
        elif isinstance(item, tuple) and len(item) == 2:
            pairs.append(item)
        else:
            raise InterventionError(
                f"{item!r} is neither an intervention (Perturb, Scale, Ablate, Force, Patch) nor a (name, fn) pair."
            )
    return pairs
