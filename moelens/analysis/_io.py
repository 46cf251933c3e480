"""File helpers shared by the analysis results: the tensor file + JSON sidecar pair, figures, and
the atomic checkpoint that long sweeps resume from."""

import hashlib
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

from moelens.errors import CheckpointError, ResultFileError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from moelens.model import HookedMoE

__all__ = ["Checkpoint", "model_fingerprint", "model_probe", "load_sidecar", "save_figure", "save_sidecar", "sidecar_paths"]


def sidecar_paths(path: str | Path) -> tuple[Path, Path]:
    """``x``, ``x.safetensors`` or ``x.json`` -> (``x.safetensors``, ``x.json``).

    >>> [p.name for p in sidecar_paths("out/stats.json")]
    ['stats.safetensors', 'stats.json']
    """
    path = Path(path)
    if path.suffix == ".json":
        path = path.with_suffix("")
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    return path, path.with_suffix(".json")


def save_sidecar(path: str | Path, tensors: dict[str, Tensor], meta: dict[str, Any], fmt: str, version: int) -> Path:
    """Write ``<path>.safetensors`` (tensors) and ``<path>.json`` (``format``, ``version``, ``meta``,
    the tensor file's name); no pickle. Returns the tensor file's path.

    >>> import tempfile, torch
    >>> with tempfile.TemporaryDirectory() as d:
    ...     written = save_sidecar(f"{d}/x", {"a": torch.ones(2)}, {"note": "hi"}, "demo", 1)
    ...     tensors, meta = load_sidecar(written, "demo", 1, "Demo")
    >>> tensors["a"].tolist(), meta["note"]
    ([1.0, 1.0], 'hi')
    """
    tensor_path, meta_path = sidecar_paths(path)
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(tensor_path))
    document = {"format": fmt, "version": version, **meta, "tensors": tensor_path.name}
    meta_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return tensor_path


def load_sidecar(path: str | Path, fmt: str, version: int, owner: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read what :func:`save_sidecar` wrote (either file's path, or the common stem), checking the
    format; raises :class:`~moelens.errors.ResultFileError` naming ``owner`` (the class reading it)."""
    tensor_path, meta_path = sidecar_paths(path)
    if not tensor_path.is_file() or not meta_path.is_file():
        raise ResultFileError(f"{owner} needs both {tensor_path} and {meta_path} (written by save()).")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise ResultFileError(f"{meta_path} is not {owner} JSON written by save() ({type(error).__name__}: {str(error)[:60]}); "
                              "write it again with save().") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt or meta.get("version") != version:
        shown = meta if not isinstance(meta, dict) else f"format={meta.get('format')!r}, version={meta.get('version')!r}"
        raise ResultFileError(f"{meta_path} is not a {fmt} v{version} file ({str(shown)[:80]}).")
    try:
        return load_file(str(tensor_path)), meta
    except Exception as error:  # safetensors raises its own SafetensorError on damaged files
        raise ResultFileError(f"{tensor_path} is damaged or not a safetensors file ({str(error)[:80]}); write it again with save().") from None


def save_figure(fig: "Figure", path: str | Path | None) -> "Figure":
    """Write ``fig`` to ``path`` when one is given; return it (it displays in Jupyter)."""
    if path is not None:
        fig.savefig(Path(path), dpi=120, bbox_inches="tight")
    return fig


def model_fingerprint(model: "HookedMoE") -> dict[str, Any]:
    """What a checkpoint records about the model: shape, name and dtype (weights are checked by a probe).

    >>> from moelens import HookedMoE
    >>> from moelens.testing import tiny_model
    >>> model_fingerprint(HookedMoE.from_hf(tiny_model("mixtral")))["dtype"]
    'torch.float32'
    """
    cfg = model.cfg
    return {
        "architecture": cfg.architecture, "n_layers": cfg.n_layers, "moe_layers": list(cfg.moe_layers),
        "n_experts": cfg.n_experts, "top_k": cfg.top_k, "d_model": cfg.d_model, "d_vocab": cfg.d_vocab,
        "name_or_path": model.name_or_path, "dtype": str(model.dtype),
    }


def model_probe(model: "HookedMoE", ids: Tensor, mask: Tensor) -> Callable[[], Tensor]:
    """A weights probe for :class:`Checkpoint`: the next-token log-probs ``[d_vocab]`` at the last real
    token of the first row of ``ids`` (computed only when called)."""

    def probe() -> Tensor:
        row, row_mask = ids[:1].to(model.device), mask[:1].to(model.device)
        with torch.no_grad():
            logits = model(row, attention_mask=row_mask)
        return torch.log_softmax(logits[0, int(row_mask[0].nonzero().max())].float(), -1).cpu()

    return probe


_RESTART = "Delete it to restart (or pass another checkpoint= path)."


class Checkpoint:
    """One safetensors file holding a sweep's running tensors and, in its metadata, the fingerprint
    of the arguments it belongs to, JSON-ready extras, an optional weights probe and a SHA-256 over
    all of it. Each save writes a temporary file unique to the writer and replaces the checkpoint
    with one ``os.replace``, so a run killed at any moment leaves either the old or the new state.

    :meth:`resume` refuses (:class:`~moelens.errors.CheckpointError`, naming the file) a damaged or
    edited file, and an *unfinished* one written with other arguments or another model; a file saved
    with ``complete=True`` by another call is superseded instead (the finished run already returned
    its result), so only an interrupted run resumes.

    ``probe`` (see :func:`model_probe`) returns log-probs; the 8 largest are stored and compared on
    resume with a tolerance, so another kernel's rounding does not refuse a resume but other weights do.

    >>> import tempfile, torch
    >>> with tempfile.TemporaryDirectory() as d:
    ...     Checkpoint(f"{d}/state.safetensors", {"n": 1}, "demo").save({"x": torch.zeros(2)}, done=1)
    ...     tensors, extras = Checkpoint(f"{d}/state.safetensors", {"n": 1}, "demo").resume()
    >>> tensors["x"].tolist(), extras["done"], extras["complete"]
    ([0.0, 0.0], 1, False)
    """

    def __init__(
        self, path: str | Path, fingerprint: dict[str, Any], what: str, probe: Callable[[], Tensor] | None = None
    ):
        self.path = Path(path)
        if self.path.parent.exists() and not self.path.parent.is_dir():
            raise CheckpointError(f"checkpoint={self.path.parent} is a file; pass a folder (it is created if missing).")
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True))  # as it reads back
        self.what = what  # the call that writes it, for messages
        self._probe = probe
        self._probe_value: Tensor | None = None
        self._written_readable = False

    def _logp(self) -> Tensor | None:
        if self._probe is not None and self._probe_value is None:
            self._probe_value = self._probe()
        return self._probe_value

    def _refuse(self, why: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {self.path} {why}. {_RESTART}")

    def resume(self) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
        """``(tensors, extras)`` saved by a call with the same fingerprint and model (``extras`` has
        ``complete``), or None if there is no file or a finished file of another call; raises
        :class:`~moelens.errors.CheckpointError` on damage or an unfinished run of another call."""
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
            raise self._refuse(f"is damaged or not a moelens checkpoint ({type(error).__name__}: {error})") from None
        if _content_hash(tensors, {"fingerprint": saved, **extras}) != saved_hash:
            raise self._refuse("does not match its own checksum (damaged or edited)")
        complete = bool(extras.get("complete", False))
        if saved != self.fingerprint:
            if complete:
                return None  # a finished run of another call: superseded by this one
            diff = sorted(k for k in set(saved) | set(self.fingerprint) if saved.get(k) != self.fingerprint.get(k))
            detail = "; ".join(f"{k}: saved {saved.get(k)!r}, now {self.fingerprint.get(k)!r}" for k in diff[:6])
            raise self._refuse(
                f"holds an interrupted run written for other inputs or other arguments of {self.what} ({detail}). "
                "Rerun with the same arguments to resume it"
            )
        if self._probe is not None and not self._same_model(extras.get("probe")):
            if complete:
                return None
            raise self._refuse(
                f"holds an interrupted run of {self.what} written with another model or other weights "
                f"(its next-token log-probs on the first input differ: saved {extras.get('probe')})"
            )
        extras["complete"] = complete
        return tensors, extras

    def _same_model(self, saved: Any) -> bool:
        logp = self._logp()
        try:
            return all(abs(float(logp[int(t)]) - float(v)) <= 1e-3 * max(1.0, abs(float(v))) for t, v in saved)
        except (TypeError, ValueError, IndexError):
            return False

    def save(self, tensors: dict[str, Tensor], complete: bool = False, **extras: Any) -> None:
        """Replace the state with ``tensors`` and JSON-ready ``extras``; ``complete=True`` marks a
        finished run (which a call with other arguments may then overwrite)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
        extras = json.loads(json.dumps({**extras, "complete": bool(complete)}))
        logp = self._logp()
        if logp is not None:
            top = logp.topk(min(8, logp.numel()))
            extras["probe"] = [[int(i), round(float(v), 5)] for i, v in zip(top.indices, top.values, strict=True)]
        meta = {"fingerprint": json.dumps(self.fingerprint, sort_keys=True)}
        meta.update({key: json.dumps(value) for key, value in extras.items()})
        meta["sha256"] = _content_hash(tensors, {"fingerprint": self.fingerprint, **extras})
        _atomic_write(self.path, lambda tmp: save_file(tensors, tmp, metadata=meta))
        if not self._written_readable:  # a readable copy of the fingerprint, for people
            text = json.dumps(self.fingerprint, indent=2, sort_keys=True) + "\n"
            _atomic_write(self.path.parent / "fingerprint.json", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
            self._written_readable = True


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
