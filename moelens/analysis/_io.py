"""File helpers shared by the analysis results: the tensor file + JSON sidecar pair, figures, and
the atomic checkpoint that long sweeps resume from."""

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from moelens.errors import InvalidInputError, ResultFileError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Checkpoint", "load_sidecar", "save_figure", "save_sidecar", "sidecar_paths"]


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
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != fmt or meta.get("version") != version:
        raise ResultFileError(
            f"{meta_path} is not a {fmt} v{version} file (format={meta.get('format')!r}, "
            f"version={meta.get('version')!r})."
        )
    return load_file(str(tensor_path)), meta


def save_figure(fig: "Figure", path: str | Path | None) -> "Figure":
    """Write ``fig`` to ``path`` when one is given; return it (it displays in Jupyter)."""
    if path is not None:
        fig.savefig(Path(path), dpi=120, bbox_inches="tight")
    return fig


class Checkpoint:
    """One safetensors file holding a sweep's running tensors and, in its metadata, the fingerprint
    of the arguments it belongs to plus any JSON-ready extras. Each save replaces the file with one
    ``os.replace``, so a run killed at any moment leaves either the old or the new state.

    >>> import tempfile, torch
    >>> with tempfile.TemporaryDirectory() as d:
    ...     Checkpoint(f"{d}/state.safetensors", {"n": 1}, "demo").save({"x": torch.zeros(2)}, done=1)
    ...     tensors, extras = Checkpoint(f"{d}/state.safetensors", {"n": 1}, "demo").resume()
    >>> tensors["x"].tolist(), extras["done"]
    ([0.0, 0.0], 1)
    """

    def __init__(self, path: str | Path, fingerprint: dict[str, Any], what: str):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.what = what  # the call that writes it, for messages

    def resume(self) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
        """``(tensors, extras)`` saved by a call with the same fingerprint, or None if there is no
        file; a file written with other arguments raises :class:`~moelens.errors.InvalidInputError`."""
        if not self.path.is_file():
            return None
        with safe_open(str(self.path), framework="pt") as handle:
            meta = handle.metadata() or {}
        saved = json.loads(meta.pop("fingerprint", "{}"))
        if saved != self.fingerprint:
            diff = sorted(k for k in set(saved) | set(self.fingerprint) if saved.get(k) != self.fingerprint.get(k))
            detail = "; ".join(f"{k}: saved {saved.get(k)!r}, now {self.fingerprint.get(k)!r}" for k in diff[:6])
            raise InvalidInputError(
                f"checkpoint {self.path.parent} was written for other inputs or other arguments of {self.what} "
                f"({detail}). Rerun with the same arguments to resume, or pass another checkpoint= path "
                "(or delete this one)."
            )
        return load_file(str(self.path)), {key: json.loads(value) for key, value in meta.items()}

    def save(self, tensors: dict[str, Tensor], **extras: Any) -> None:
        """Replace the state with ``tensors`` and JSON-ready ``extras`` (stored in the metadata)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"fingerprint": json.dumps(self.fingerprint, sort_keys=True)}
        meta.update({key: json.dumps(value) for key, value in extras.items()})
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(tmp), metadata=meta)
        os.replace(tmp, self.path)
        readable = self.path.parent / "fingerprint.json"
        if not readable.is_file():
            readable.write_text(json.dumps(self.fingerprint, indent=2, sort_keys=True) + "\n", encoding="utf-8")
