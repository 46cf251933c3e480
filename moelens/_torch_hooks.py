"""Torch hooks that moelens installs for one call, and finds again if one was left behind.

Every hook goes through :func:`own_hook`, which puts its removal on an ``ExitStack`` before the hook
exists; :func:`remove_installed_hooks` (``reset_hooks()``) removes any that an exception or a signal
left on a module.
"""

from __future__ import annotations

import functools
from contextlib import ExitStack
from typing import Any

from torch import nn

__all__ = ["own_hook", "remove_installed_hooks"]

# Every torch hook moelens installs is in this set until removed, so reset_hooks() can find any
# that an exception or a signal left behind.
_INSTALLED: set = set()
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks")


def own_hook(stack: ExitStack, module: nn.Module, fn: Any, pre: bool = False, **kwargs: Any) -> None:
    """Register ``fn`` as a forward (``pre=True``: forward-pre) hook of ``module``, owned by ``stack``
    before it exists: the removal (by identity of ``fn``) is on the stack first, so an exception or
    an asynchronous KeyboardInterrupt landing at any statement cannot leave the hook behind."""
    fn = functools.partial(fn)  # a new object per installation: removal by identity takes only this one
    _INSTALLED.add(fn)
    stack.callback(_remove_hook, module, fn)
    (module.register_forward_pre_hook if pre else module.register_forward_hook)(fn, **kwargs)


def _remove_hook(module: nn.Module, fn: Any) -> None:
    for name in _HOOK_DICTS:
        hooks = getattr(module, name)
        for key in [key for key, hook in hooks.items() if hook is fn]:
            del hooks[key]
            for extra in ("_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs"):
                getattr(module, extra, {}).pop(key, None)
    _INSTALLED.discard(fn)


def remove_installed_hooks(root: nn.Module) -> None:
    """Remove from every module under ``root`` each torch hook that :func:`own_hook` installed."""
    for module in root.modules():
        for name in _HOOK_DICTS:
            for hook in [hook for hook in getattr(module, name).values() if hook in _INSTALLED]:
                _remove_hook(module, hook)
