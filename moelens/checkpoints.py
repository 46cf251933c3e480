"""What a checkpoint of a long run is keyed on, and the atomic file that holds it.

A checkpoint may only be resumed by the same computation, so its fingerprint holds everything that
shapes the result: the model (:func:`model_fingerprint`: name, dtype, shape, a digest of *all*
router weights and a sample of every other weight), the inputs (a digest), every argument, and the
identity of any user callable (:func:`callable_identity`). A callable whose identity cannot be
written down (a lambda, a closure, a nested function, a callable object) is refused for checkpointed
runs, since two of them look alike.

Policy on a mismatch (one rule for every sweep): an *unfinished* checkpoint written by another call
is refused with :class:`~moelens.errors.CheckpointError` naming what differs; a *finished* one is
superseded: the run is recomputed and overwrites it. Nothing is ever mixed.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from moelens.architectures.registry import resolve
from moelens.errors import CheckpointError

if TYPE_CHECKING:
    from moelens.backends.protocol import MoEBackend

__all__ = ["Checkpoint", "callable_identity", "model_fingerprint", "tensor_digest"]

_SAMPLE = 64  # elements read from each non-router weight (evenly spaced)


def tensor_digest(*tensors: Tensor) -> str:
    """SHA-256 over the dtype, shape and bytes of each tensor (any device; meta tensors by shape).

    >>> tensor_digest(torch.ones(2)) == tensor_digest(torch.ones(2)), tensor_digest(torch.ones(2)) == tensor_digest(torch.zeros(2))
    (True, False)
    """
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(f"{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if tensor.device.type != "meta":
            digest.update(_bytes(tensor))
    return digest.hexdigest()


def _bytes(tensor: Tensor) -> bytes:
    flat = tensor.detach().reshape(-1).cpu().contiguous()
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def model_fingerprint(model: MoEBackend) -> dict[str, Any]:
    """The model part of a checkpoint's fingerprint: shape, name, dtype, ``routers`` (a digest of every
    parameter and buffer of every router, byte for byte: a 2% change of one router weight shows) and
    ``weights`` (a digest of every other parameter's shape and ``64`` evenly spaced elements).

    >>> from moelens import HookedMoE
    >>> from moelens.testing import tiny_model
    >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
    >>> before = model_fingerprint(model)
    >>> router = model.layers[1].mlp.gate
    >>> with torch.no_grad():
    ...     router.weight[0, 0] *= 1.02
    >>> after = model_fingerprint(model)
    >>> before["dtype"], before["routers"] == after["routers"], before["weights"] == after["weights"]
    ('torch.float32', False, True)
    """
    cfg, spec, hf_model = model.cfg, model.spec, model.hf_model
    layers = resolve(hf_model, spec.layers)
    routers = [resolve(resolve(layers[i], spec.moe_block), spec.router) for i in cfg.moe_layers]
    router_ids = {id(t) for r in routers for t in (*r.parameters(), *r.buffers())}
    router_digest = hashlib.sha256()
    for layer, router in zip(cfg.moe_layers, routers, strict=True):
        for name, tensor in (*router.named_parameters(), *router.named_buffers()):
            router_digest.update(f"{layer}.{name}:{tensor_digest(tensor)}".encode())
    weights = hashlib.sha256()
    for name, param in hf_model.named_parameters():
        if id(param) in router_ids:
            continue
        flat = param.detach().reshape(-1)
        sample = flat[torch.linspace(0, flat.numel() - 1, min(_SAMPLE, flat.numel()), device=flat.device).long()]
        weights.update(f"{name}:{tuple(param.shape)}:{tensor_digest(sample)}".encode())
    return {
        "architecture": cfg.architecture, "n_layers": cfg.n_layers, "moe_layers": list(cfg.moe_layers),
        "n_experts": cfg.n_experts, "top_k": cfg.top_k, "d_model": cfg.d_model, "d_vocab": cfg.d_vocab,
        "name_or_path": model.name_or_path, "dtype": str(model.dtype),
        "routers": router_digest.hexdigest(), "weights": weights.hexdigest(),
    }


def callable_identity(fn: Any, given: str | None = None, what: str = "metric") -> str:
    """A stable name of ``fn`` for a fingerprint: ``given`` (e.g. ``metric_id=``) when passed, the
    ``moelens_id`` attribute that moelens' own metric factories set, or ``module:qualname`` of a
    top-level function (plus a digest of its code, so an edited function is another metric).
    Anything else (lambda, closure, nested function, callable object, partial) has no identity
    that survives a restart and raises :class:`~moelens.errors.CheckpointError` naming the fix.

    >>> import math
    >>> callable_identity(math.sqrt) == "math:sqrt"
    True
    >>> callable_identity(lambda x: x, given="my-metric-v1")
    'my-metric-v1'
    """
    if given is not None:
        if not isinstance(given, str) or not given:
            raise CheckpointError(f"{what}_id={given!r}: pass a non-empty str that names the {what} (e.g. 'logit_diff-v1').")
        return given
    own = getattr(fn, "moelens_id", None)
    if isinstance(own, str) and own:
        return own
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    top_level = isinstance(qualname, str) and "<" not in qualname and "." not in qualname and module is not None
    resolved = None
    if top_level:
        try:
            resolved = getattr(importlib.import_module(module), qualname, None)
        except Exception:  # a module that cannot be re-imported (e.g. one run from a notebook cell)
            resolved = None
    if resolved is not fn or getattr(fn, "__closure__", None):
        shown = getattr(fn, "__qualname__", type(fn).__name__)
        raise CheckpointError(
            f"{what} {shown!r} has no stable identity (a lambda, closure, nested function or callable object "
            f"looks the same as any other), so a checkpointed run cannot tell whether a saved result belongs to it. "
            f"Pass a named top-level function (def my_{what}(logits): ... at module level), or name it with "
            f"{what}_id='...' (change the id whenever the {what} changes)."
        )
    code = getattr(fn, "__code__", None)
    suffix = "" if code is None else "#" + hashlib.sha256(code.co_code + repr(code.co_names).encode()).hexdigest()[:12]
    return f"{module}:{qualname}{suffix}"


_RESTART = "Delete it to restart (or pass another checkpoint= path)."


class Checkpoint:
    """One safetensors file holding a run's tensors and, in its metadata, the fingerprint of the call
    it belongs to, JSON-ready extras and a SHA-256 over all of it. Each save writes a temporary file
    unique to the writer and replaces the checkpoint with one ``os.replace``, so a run killed at any
    moment leaves either the old or the new state.

    :meth:`resume` refuses (:class:`~moelens.errors.CheckpointError`, naming the file and what
    differs) a damaged or edited file and an *unfinished* one written by another call; a file saved
    with ``complete=True`` by another call is superseded instead (module docstring).

    >>> import tempfile, torch
    >>> with tempfile.TemporaryDirectory() as d:
    ...     Checkpoint(f"{d}/state.safetensors", {"n": 1}, "demo").save({"x": torch.zeros(2)}, done=1)
    ...     tensors, extras = Checkpoint(f"{d}/state.safetensors", {"n": 1}, "demo").resume()
    >>> tensors["x"].tolist(), extras["done"], extras["complete"]
    ([0.0, 0.0], 1, False)
    """

    def __init__(self, path: str | Path, fingerprint: dict[str, Any], what: str):
        self.path = Path(path)
        existing = next((folder for folder in self.path.parents if folder.exists()), None)  # the folder is made on save
        if existing is not None and not existing.is_dir():
            raise CheckpointError(f"checkpoint={existing} is a file; pass a folder (it is created if missing).")
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True))  # as it reads back
        self.what = what  # the call that writes it, for messages
        self._written_readable = False

    def refuse(self, why: str) -> CheckpointError:
        """The error for this file: ``why`` plus how to restart."""
        return CheckpointError(f"checkpoint {self.path} {why}. {_RESTART}")

    def resume(self) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
        """``(tensors, extras)`` saved by a call with the same fingerprint (``extras`` has
        ``complete``), or None if there is no file or a finished file of another call."""
        if not self.path.exists():
            return None
        try:
            with safe_open(str(self.path), framework="pt") as handle:
                meta = dict(handle.metadata() or {})
            tensors = load_file(str(self.path))
            saved_hash = meta.pop("sha256")
            saved = json.loads(meta.pop("fingerprint"))
            extras = {key: json.loads(value) for key, value in meta.items()}
        except Exception as error:  # truncated, garbage, a folder, not written by moelens
            raise self.refuse(f"is damaged or not a moelens checkpoint ({type(error).__name__}: {error})") from None
        if _content_hash(tensors, {"fingerprint": saved, **extras}) != saved_hash:
            raise self.refuse("does not match its own checksum (damaged or edited)")
        complete = bool(extras.get("complete", False))
        if saved != self.fingerprint:
            if complete:
                return None  # a finished run of another call: superseded by this one
            raise self.refuse(f"holds an interrupted run of {self.what} written {_differences(saved, self.fingerprint)}. "
                              "Rerun with the same model, inputs and arguments to resume it")
        extras["complete"] = complete
        return tensors, extras

    def save(self, tensors: dict[str, Tensor], complete: bool = False, **extras: Any) -> None:
        """Replace the state with ``tensors`` and JSON-ready ``extras``; ``complete=True`` marks a
        finished run (which a call with other arguments may then overwrite)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
        extras = json.loads(json.dumps({**extras, "complete": bool(complete)}))
        meta = {"fingerprint": json.dumps(self.fingerprint, sort_keys=True)}
        meta.update({key: json.dumps(value) for key, value in extras.items()})
        meta["sha256"] = _content_hash(tensors, {"fingerprint": self.fingerprint, **extras})
        _atomic_write(self.path, lambda tmp: save_file(tensors, tmp, metadata=meta))
        if not self._written_readable:  # a readable copy of the fingerprint, for people
            text = json.dumps(self.fingerprint, indent=2, sort_keys=True) + "\n"
            _atomic_write(self.path.parent / "fingerprint.json", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
            self._written_readable = True


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> str:
    """``with another model (routers: ...)`` / ``for other inputs or arguments (key: saved .., now ..)``."""
    parts = []
    old_model, new_model = saved.get("model") or {}, now.get("model") or {}
    if old_model != new_model:
        keys = sorted(k for k in set(old_model) | set(new_model) if old_model.get(k) != new_model.get(k))
        parts.append("with another model or other weights (" + "; ".join(
            f"{k}: saved {old_model.get(k)!r}, now {new_model.get(k)!r}" for k in keys[:4]) + ")")
    keys = sorted(k for k in set(saved) | set(now) if k != "model" and saved.get(k) != now.get(k))
    if keys:
        parts.append("for other inputs or other arguments (" + "; ".join(
            f"{k}: saved {saved.get(k)!r}, now {now.get(k)!r}" for k in keys[:6]) + ")")
    return " and ".join(parts)


def _content_hash(tensors: dict[str, Tensor], meta: dict[str, Any]) -> str:
    """SHA-256 over the metadata (canonical JSON) and every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"\x00{name}\x00{tensor.dtype}\x00{tuple(tensor.shape)}\x00".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _atomic_write(path: Path, write: Callable[[str], Any]) -> None:
    """Write through a temporary file unique to this writer (process and thread), then replace."""
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
