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
    "ResultFileError",
    "BackendError",
    "CheckpointError",
    "ConcurrentUseError",
    "NonFiniteError",
    "DataNotFoundError",
]


class MoelensError(Exception):
    """Base class of every error moelens raises on purpose; catch it to catch them all.

    >>> issubclass(UnknownHookError, MoelensError) and issubclass(UnknownHookError, KeyError)
    True
    """


class UnsupportedArchitectureError(MoelensError, ValueError):
    """The model is dense, or its MoE family has no registered architecture spec.

    >>> from moelens.architectures import spec_for_model_type
    >>> spec_for_model_type("llama")
    Traceback (most recent call last):
    ...
    moelens.errors.UnsupportedArchitectureError: model_type 'llama' is not a supported MoE family ...
    """


class UnknownHookError(MoelensError, KeyError):
    """A hook name that this model does not offer; the message suggests close names.

    >>> print(UnknownHookError("blocks.0.hook_resid_pr", ["blocks.0.hook_resid_pre"]))
    unknown hook name 'blocks.0.hook_resid_pr'. Did you mean 'blocks.0.hook_resid_pre'? ...
    """

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
    """A hook returned a tensor whose shape or dtype does not match the activation it replaces.

    >>> import torch
    >>> from moelens.hook_points import HookPoint
    >>> from moelens.names import HOOK_TABLE
    >>> hp = HookPoint("blocks.0.moe.hook_out", 0, HOOK_TABLE["hook_out"])
    >>> _ = hp.add(lambda x, hook: x[:, :1])
    >>> hp(torch.zeros(1, 3, 4))
    Traceback (most recent call last):
    ...
    moelens.errors.HookShapeError: hook ... on 'blocks.0.moe.hook_out' returned shape (1, 1, 4); expected (1, 3, 4) [batch pos d_model].
    """


class ReadOnlyHookError(MoelensError, RuntimeError):
    """A hook tried to write to a read-only hook point (``hook_router_scores``).

    >>> import torch
    >>> from moelens.hook_points import HookPoint
    >>> from moelens.names import HOOK_TABLE
    >>> hp = HookPoint("blocks.0.moe.hook_router_scores", 0, HOOK_TABLE["hook_router_scores"])
    >>> _ = hp.add(lambda x, hook: x * 2)
    >>> hp(torch.ones(1, 1, 4))
    Traceback (most recent call last):
    ...
    moelens.errors.ReadOnlyHookError: hook 'blocks.0.moe.hook_router_scores' is read-only ...
    """


class InvalidInputError(MoelensError, ValueError):
    """Inputs (texts, token ids, masks, layer indices) that the model cannot run on.

    >>> import torch
    >>> from moelens.inputs import prepare_inputs
    >>> prepare_inputs(torch.tensor([[5, 120]]), None, None, vocab_size=100, device="cpu")
    Traceback (most recent call last):
    ...
    moelens.errors.InvalidInputError: token id 120 is outside the vocabulary [0, 99].
    """


class InterventionError(MoelensError, ValueError):
    """An intervention whose layers, experts, positions or factor are out of range.

    >>> from moelens import Perturb
    >>> Perturb(layers=0, experts=1, sign=2)
    Traceback (most recent call last):
    ...
    moelens.errors.InterventionError: Perturb sign=2 must be -1 or +1.
    """


class ModelLoadError(MoelensError, OSError):
    """A model name or path that could not be loaded (not a zoo name, not a local folder, hub offline).

    >>> from moelens import HookedMoE
    >>> HookedMoE.from_pretrained("nobody/no-such-moe")  # offline here
    Traceback (most recent call last):
    ...
    moelens.errors.ModelLoadError: could not load 'nobody/no-such-moe': it is not a moelens zoo name ...
    """


class ResultFileError(MoelensError, FileNotFoundError, ValueError):
    """A saved result (``RoutingStats``, ``DriverEffects``) that is missing or not in the expected format.

    >>> from moelens.analysis import RoutingStats
    >>> RoutingStats.load("no/such/stats")
    Traceback (most recent call last):
    ...
    moelens.errors.ResultFileError: RoutingStats needs both no/such/stats.safetensors and no/such/stats.json (written by save()).
    """


class DataNotFoundError(MoelensError, FileNotFoundError):
    """An evaluation data set (or one of its splits) that is neither in a local folder nor loadable
    from the HF hub here (no ``datasets`` package, offline). A local folder that lacks the split
    asked for is a typo, an :class:`InvalidInputError` naming the splits there.

    >>> isinstance(DataNotFoundError("sst2 split 'test' was not found locally"), FileNotFoundError)
    True
    """


class BackendError(MoelensError, RuntimeError):
    """An optional backend that cannot run: nnsight not installed, a remote model not served, no
    NDIF API key configured.

    >>> from moelens.errors import BackendError
    >>> isinstance(BackendError("not served"), RuntimeError)
    True
    """


class CheckpointError(InvalidInputError):
    """A ``checkpoint=`` file that cannot be resumed: damaged, edited, or an interrupted run of other
    arguments, inputs, dtype or weights. The message names the file; delete it to restart.

    >>> import tempfile, pathlib
    >>> from moelens.analysis._io import Checkpoint
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = pathlib.Path(d, "state.safetensors").write_bytes(b"garbage")
    ...     Checkpoint(f"{d}/state.safetensors", {}, "demo").resume()
    Traceback (most recent call last):
    ...
    moelens.errors.CheckpointError: checkpoint .../state.safetensors is damaged or not a moelens checkpoint (...). Delete it to restart (or pass another checkpoint= path).
    """


class ConcurrentUseError(MoelensError, RuntimeError):
    """A second thread used a :class:`~moelens.HookedMoE` while another thread was inside a call
    (or a ``hooks()``/``intervene()`` block) of it. Hooks and interventions are attached to the
    model, not to a thread, so the second call would run with the first one's hooks: it is refused.

    >>> import threading, torch
    >>> from moelens import HookedMoE, Ablate
    >>> from moelens.testing import tiny_model
    >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
    >>> errors = []
    >>> def other_thread():
    ...     try:
    ...         model(torch.tensor([[1, 2]]))
    ...     except ConcurrentUseError as error:
    ...         errors.append(error)
    >>> with model.intervene(Ablate(0, 1)):
    ...     thread = threading.Thread(target=other_thread, name="worker"); thread.start(); thread.join()
    >>> print(errors[0])  # doctest: +ELLIPSIS
    this HookedMoE is in use by thread 'MainThread' ...
    """


class NonFiniteError(MoelensError, FloatingPointError):
    """NaN or inf appeared in a model call with hooks or interventions: the message names the first hook
    point whose returned value held them (or the output, for an in-place edit). ``model.check_finite =
    False`` turns the check off.

    >>> import torch
    >>> from moelens import HookedMoE
    >>> from moelens.testing import tiny_model
    >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
    >>> nan = lambda x, hook: torch.full_like(x, float("nan"))
    >>> model.run_with_hooks(torch.tensor([[1, 2]]), [("blocks.1.moe.hook_out", nan)])
    Traceback (most recent call last):
    ...
    moelens.errors.NonFiniteError: hook <lambda> on 'blocks.1.moe.hook_out' returned 64 NaN of 64 values; ...
    """
