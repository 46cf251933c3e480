"""Named hook points and the verbs that attach functions to them.

A :class:`HookPoint` is not an ``nn.Module``: moelens never copies or rewraps HF modules. The model
intercepts HF's own tensors (router outputs, expert inputs, block inputs and outputs) and passes them
through the hook point of the same name, which runs the user's functions in order. A function takes
``(tensor, hook)`` and returns None (read, or edit in place) or a tensor of the same shape and dtype
that replaces the activation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Union

import torch
from torch import Tensor

from .errors import HookShapeError, ReadOnlyHookError, UnknownHookError
from .names import HookSpec

__all__ = ["HookPoint", "HookFn", "NameFilter", "HookRegistry"]

HookFn = Callable[..., Union[Tensor, None]]
NameFilter = Union[str, Iterable[str], Callable[[str], bool], None]


class HookPoint:
    """One named activation. ``hook.name``, ``hook.layer`` and ``hook.spec`` describe it.

    >>> from moelens.names import HOOK_TABLE
    >>> hp = HookPoint("blocks.0.moe.hook_out", 0, HOOK_TABLE["hook_out"])
    >>> _ = hp.add(lambda x, hook: x * 2)
    >>> hp(torch.ones(1, 2, 3)).sum().item()
    12.0
    """

    __slots__ = ("name", "layer", "spec", "fns")

    def __init__(self, name: str, layer: int, spec: HookSpec):
        self.name = name
        self.layer = layer
        self.spec = spec
        self.fns: list[HookFn] = []

    @property
    def active(self) -> bool:
        return bool(self.fns)

    def add(self, fn: HookFn) -> Callable[[], None]:
        """Attach ``fn``; returns a function that detaches it."""
        self.fns.append(fn)
        return lambda: self.fns.remove(fn) if fn in self.fns else None

    def __call__(self, tensor: Tensor) -> Tensor:
        """Run every function in order; returns the (possibly replaced) activation."""
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
            result = result.to(original.device)
        return result

    def __repr__(self) -> str:
        return f"HookPoint({self.name!r}, {len(self.fns)} fn)"


def _fn_name(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


class HookRegistry:
    """The hook points of one model, by name, and the verbs that attach functions to them."""

    def __init__(self, points: Iterable[HookPoint]):
        self.points: dict[str, HookPoint] = {hp.name: hp for hp in points}

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
        return [self[name] for name in name_filter]

    def active_points(self) -> list[HookPoint]:
        return [hp for hp in self.points.values() if hp.active]

    @contextmanager
    def attached(self, fwd_hooks: Iterable[tuple[str | Callable[[str], bool], HookFn]]) -> Iterator[None]:
        """Attach ``(name_or_predicate, fn)`` pairs for the duration of the block, removing them on exit,
        also when the block raises."""
        detach: list[Callable[[], None]] = []
        try:
            for target, fn in fwd_hooks:
                if not callable(fn):
                    raise TypeError(f"hook for {target!r} is {fn!r}, not a function (tensor, hook) -> tensor | None")
                points = self.select(target)
                detach.extend(hp.add(fn) for hp in points)
            yield
        finally:
            for undo in reversed(detach):
                undo()

    def remove_all(self) -> None:
        for hp in self.points.values():
            hp.fns.clear()

