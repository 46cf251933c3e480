"""Argument checks shared by the entry points (evaluate, the study, the CLI): each bad value becomes an
:class:`~moelens.errors.InvalidInputError` that names it and the fix, raised before any model work.

Bools are refused where a number is meant (``True`` is an int to Python, never a count to a person).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .errors import InvalidInputError

__all__ = ["check_count", "check_device", "check_factors", "check_new_file", "check_number", "hook_pair", "listed"]

_DEVICE_FIX = "pass 'cpu', or a device this machine has (torch.cuda.device_count() lists the GPUs)"


def check_count(name: str, value: Any, minimum: int = 0, *, optional: bool = False, fix: str = "") -> None:
    """Refuse a count that is not an int >= ``minimum`` (``None`` too, unless ``optional``).

    >>> check_count("n_random", -1)
    Traceback (most recent call last):
    ...
    moelens.errors.InvalidInputError: n_random=-1 must be an int >= 0.
    >>> check_count("shots", 2.5, fix="the number of few-shot examples")
    Traceback (most recent call last):
    ...
    moelens.errors.InvalidInputError: shots=2.5 must be an int >= 0 (the number of few-shot examples).
    """
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        hint = f" ({fix})" if fix else ""
        none = " or None" if optional else ""
        raise InvalidInputError(f"{name}={value!r} must be an int >= {minimum}{none}{hint}.")


def check_number(name: str, value: Any, minimum: float | None = None) -> None:
    """Refuse a bool, a non-number, NaN or inf, or a number below ``minimum``.

    >>> check_number("push", float("nan"))
    Traceback (most recent call last):
    ...
    moelens.errors.InvalidInputError: push=nan must be a finite number.
    """
    bound = f" >= {minimum}" if minimum is not None else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInputError(f"{name}={value!r} must be a finite number{bound}.")
    if minimum is not None and value < minimum:
        raise InvalidInputError(f"{name}={value!r} must be a finite number{bound}.")


def check_factors(factors: Any) -> tuple[float, ...]:
    """The study's re-weighting factors: a non-empty sequence of finite numbers > 0 (1.0 changes nothing).

    >>> check_factors(())
    Traceback (most recent call last):
    ...
    moelens.errors.InvalidInputError: factors=() is empty; pass at least one factor, e.g. factors=(0.8, 1.2).
    >>> check_factors([0.8, float("nan")])
    Traceback (most recent call last):
    ...
    moelens.errors.InvalidInputError: factors=[0.8, nan]: factor nan must be a finite number > 0 (0.8 down-weights, 1.2 up-weights).
    """
    if isinstance(factors, (str, bytes)) or not isinstance(factors, Sequence):
        raise InvalidInputError(f"factors={factors!r} must be a list of numbers, e.g. factors=(0.8, 1.2).")
    if not factors:
        raise InvalidInputError(f"factors={factors!r} is empty; pass at least one factor, e.g. factors=(0.8, 1.2).")
    for factor in factors:
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 0:
            raise InvalidInputError(f"factors={list(factors)!r}: factor {factor!r} must be a finite number > 0 "
                                    "(0.8 down-weights, 1.2 up-weights).")
    return tuple(float(f) for f in factors)


def check_new_file(path: Path, what: str) -> None:
    """An output *folder* argument that names an existing file is refused before the work it would follow.

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile() as f:
    ...     check_new_file(Path(f.name), "--out")
    Traceback (most recent call last):
    ...
    moelens.errors.InvalidInputError: --out ... is a file, not a folder; pass a folder path (it is created if missing).
    """
    if path.exists() and not path.is_dir():
        raise InvalidInputError(f"{what} {path} is a file, not a folder; pass a folder path (it is created if missing).")


def listed(hooks: Any, what: str) -> list:
    """``hooks`` as a list: one intervention or one ``(name, fn)`` pair stands for a list of one.

    >>> listed(5, "fwd_hooks")
    Traceback (most recent call last):
    ...
    moelens.errors.InvalidInputError: fwd_hooks=5 is not a list of (name or predicate, fn) pairs or interventions.
    """
    if callable(getattr(hooks, "hooks", None)):
        return [hooks]
    if isinstance(hooks, tuple) and len(hooks) == 2 and callable(hooks[1]) and not callable(getattr(hooks[0], "hooks", None)):
        return [hooks]
    if isinstance(hooks, (str, bytes)) or not isinstance(hooks, Iterable):
        raise InvalidInputError(f"{what}={hooks!r} is not a list of (name or predicate, fn) pairs or interventions.")
    return list(hooks)


def hook_pair(pair: Any, direction: str) -> tuple[Any, Any]:
    """A ``(name or predicate, fn)`` pair, or an error naming what was passed instead.

    >>> hook_pair((None, print), "fwd")
    Traceback (most recent call last):
    ...
    moelens.errors.InvalidInputError: hook target None for 'print': pass a hook name, a list of names, or a predicate (lambda name: True attaches to every hook point).
    """
    if callable(getattr(pair, "hooks", None)):
        where = "fwd_hooks= or run_with_interventions()" if direction == "bwd" else "run_with_interventions() or intervene()"
        raise InvalidInputError(f"{pair!r} is an intervention, not a ({direction} hook name, fn) pair; pass it to {where}.")
    if not isinstance(pair, tuple) or len(pair) != 2:
        raise InvalidInputError(f"{direction} hook {pair!r} is not a (name or predicate, fn) pair.")
    target, fn = pair
    if target is None:  # None would select every hook point, a surprise for a hook that edits
        raise InvalidInputError(f"hook target None for {getattr(fn, '__qualname__', None) or fn!r}: pass a hook name, a list of "
                                "names, or a predicate (lambda name: True attaches to every hook point).")
    if not (isinstance(target, str) or callable(target) or (isinstance(target, (list, tuple, set)) and all(isinstance(t, str) for t in target))):
        raise InvalidInputError(f"hook target {target!r} is not a hook name, a list of names, or a predicate; "
                                "`model.hook_names` lists the names.")
    return target, fn


def check_device(device: object, name: str = "device") -> None:
    """Refuse a device that is not a device, or not on this machine, before any work starts (torch
    would fail later with an assertion, or deep inside a forward).

    >>> check_device("tpu")
    Traceback (most recent call last):
    ...
    moelens.errors.InvalidInputError: device='tpu' is not a torch device; pass 'cpu', or a device this machine has (torch.cuda.device_count() lists the GPUs).
    """
    import torch

    if device is None:
        return
    try:
        parsed = torch.device(device)  # also takes an int (a CUDA index)
    except (RuntimeError, TypeError, ValueError):
        raise InvalidInputError(f"{name}={device!r} is not a torch device; {_DEVICE_FIX}.") from None
    kind = parsed.type
    if kind in ("cpu", "meta"):
        return
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InvalidInputError(f"{name}={device!r}: CUDA is not available on this machine (no GPU, or a CPU-only torch); {_DEVICE_FIX}.")
        if parsed.index is not None and parsed.index >= count:
            raise InvalidInputError(f"{name}={device!r}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}; {_DEVICE_FIX}.")
        return
    try:  # mps, xpu, ...: a zero-size tensor tells whether the backend is there (once per call)
        torch.empty(0, device=parsed)
    except Exception as error:
        reason = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
        raise InvalidInputError(f"{name}={device!r} is not available on this machine ({reason}); {_DEVICE_FIX}.") from None
