"""File helpers shared by the analysis results (tensor file + JSON sidecar; figures)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure


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


def save_figure(fig: Figure, path: str | Path | None) -> Figure:
    """Write ``fig`` to ``path`` when one is given; return it (it displays in Jupyter)."""
    if path is not None:
        fig.savefig(Path(path), dpi=120, bbox_inches="tight")
    return fig


def write_result(path: str | Path, tensors: dict, meta: dict) -> Path:
    """Write ``tensors`` to ``<path>.safetensors`` and ``meta`` (plus the tensor file's name) to
    ``<path>.json``; returns the tensor file's path."""
    import json

    from safetensors.torch import save_file

    tensor_path, meta_path = sidecar_paths(path)
    save_file({name: t.contiguous() for name, t in tensors.items()}, str(tensor_path))
    meta_path.write_text(json.dumps({**meta, "tensors": tensor_path.name}, indent=2) + "\n", encoding="utf-8")
    return tensor_path


def read_result(path: str | Path, fmt: str, version: int) -> tuple[dict, dict]:
    """``(tensors, meta)`` written by :func:`write_result`; a missing file or another format raises
    :class:`~moelens.errors.InvalidInputError`."""
    import json

    from safetensors.torch import load_file

    from moelens.errors import InvalidInputError

    tensor_path, meta_path = sidecar_paths(path)
    if not tensor_path.is_file() or not meta_path.is_file():
        raise InvalidInputError(f"{fmt} needs both {tensor_path} and {meta_path} (written by save()).")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != fmt or meta.get("version") != version:
        raise InvalidInputError(
            f"{meta_path} is not a {fmt} v{version} file (format={meta.get('format')!r}, version={meta.get('version')!r})."
        )
    return load_file(str(tensor_path)), meta
