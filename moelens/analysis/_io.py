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
