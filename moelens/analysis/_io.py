"""File helpers shared by the analysis results: the tensor file + JSON sidecar pair and figures.
(:class:`~moelens.checkpoints.Checkpoint` lives in :mod:`moelens.checkpoints`; re-exported here.)"""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors.torch import load_file, save_file
from torch import Tensor

from moelens.checkpoints import Checkpoint, model_fingerprint
from moelens.errors import ResultFileError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Checkpoint", "model_fingerprint", "load_sidecar", "save_figure", "save_sidecar", "sidecar_paths"]


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
