"""One exception base for moelens; each subclass also inherits the builtin a user would catch.

Every message names the offending value and says how to fix it. The docs have one page per class
(symptom, cause, fix).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "MoelensError",
    "UnsupportedArchitectureError",
    "UnknownHookError",
    "HookShapeError",
    "ReadOnlyHookError",
    "InvalidInputError",
    "InterventionError",
    "ModelLoadError",
]


class MoelensError(Exception):
    """Base class of every error moelens raises on purpose."""


class UnsupportedArchitectureError(MoelensError, ValueError):
    """The model is dense, or its MoE family has no registered architecture spec."""


class UnknownHookError(MoelensError, KeyError):
    """A hook name that this model does not offer."""

    def __init__(self, name: str, available: Iterable[str]):
        self.name = name
        close = difflib.get_close_matches(name, list(available), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        self.message = (
            f"unknown hook name {name!r}.{hint} `model.hook_names` lists every hook this model offers."
        )
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would repr() the message and add quotes
        return self.message


class HookShapeError(MoelensError, ValueError):
    """A hook returned a tensor whose shape or dtype does not match the activation it replaces."""


class ReadOnlyHookError(MoelensError, RuntimeError):
    """A hook tried to write to a read-only hook point."""


class InvalidInputError(MoelensError, ValueError):
    """Inputs (texts, token ids, masks, layer indices) that the model cannot run on."""


class InterventionError(MoelensError, ValueError):
    """An intervention whose layers, experts, positions or factor are out of range."""


class ModelLoadError(MoelensError, OSError):
    """A model name or path that could not be loaded (not a zoo name, not a local folder, hub offline)."""
