"""``PatchingResult``: a metric value per (layer, position) or per (layer, expert), as a tensor, a table,
a heatmap and a file."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from torch import Tensor

from moelens.errors import InvalidInputError
from moelens.lazy import pandas as pd
from moelens.results import Result

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["PatchingResult"]

class PatchingResult(Result):
    """The metric after each patch: ``values [layer pos]`` (activation patching) or ``[layer expert]``
    (routing patching), float64 on the CPU; ``layers`` labels the rows (model layer indices), ``column``
    names the other axis. ``settings`` holds what was patched, the metric's name and the unpatched
    metrics (``clean_metric``, ``corrupted_metric``), so ``normalized()`` gives TransformerLens's usual
    ``(value - corrupted) / (clean - corrupted)``.

    >>> import torch
    >>> result = PatchingResult(torch.tensor([[0.0, 1.0], [2.0, 3.0]]), (0, 1), "pos",
    ...                         {"clean_metric": 3.0, "corrupted_metric": 0.0})
    >>> result.to_frame().shape, float(result.normalized()[1, 1])
    ((4, 3), 1.0)
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     PatchingResult.load(result.save(f"{d}/p")).layers
    (0, 1)
    """

    FORMAT: ClassVar[str] = "moelens.PatchingResult"
    VERSION: ClassVar[int] = 1

    def __init__(self, values: Tensor, layers: tuple[int, ...], column: str, settings: dict[str, Any] | None = None):
        self.values = values.detach().cpu().double()
        self.layers = tuple(int(x) for x in layers)
        self.column = str(column)
        self.settings = dict(settings or {})
        if self.values.ndim != 2 or self.values.shape[0] != len(self.layers):
            raise InvalidInputError(
                f"PatchingResult values have shape {tuple(self.values.shape)}; expected ({len(self.layers)}, {self.column})."
            )

    def normalized(self) -> Tensor:
        """``(values - corrupted_metric) / (clean_metric - corrupted_metric)``: 1 where the patch restores
        the clean metric, 0 where it changes nothing."""
        clean, corrupted = self.settings.get("clean_metric"), self.settings.get("corrupted_metric")
        if clean is None or corrupted is None or clean == corrupted:
            raise InvalidInputError("normalized() needs different clean_metric and corrupted_metric in settings.")
        return (self.values - corrupted) / (clean - corrupted)

    def to_frame(self) -> pd.DataFrame:
        """One row per cell: ``layer``, the column axis (``pos`` or ``expert``) and ``value``."""
        n_rows, n_cols = self.values.shape
        return pd.DataFrame({
            "layer": np.repeat(self.layers, n_cols),
            self.column: np.tile(np.arange(n_cols), n_rows),
            "value": self.values.reshape(-1).numpy(),
        })

    def _figsize(self) -> tuple[float, float]:
        n_rows, n_cols = self.values.shape
        return min(max(5.0, 0.3 * n_cols + 2.5), 20.0), min(max(2.5, 0.3 * n_rows + 1.5), 10.0)

    def _draw(self, ax: Axes, **options: Any) -> None:
        """Heatmap of ``values`` (layer x pos or layer x expert), diverging colours around the corrupted
        metric when it is known, with its colour bar."""
        n_rows, _ = self.values.shape
        values = self.values.numpy()
        center = float(self.settings.get("corrupted_metric", 0.0))
        finite = values[np.isfinite(values)]
        bound = float(np.abs(finite - center).max()) if finite.size and np.abs(finite - center).max() > 0 else 1.0
        image = ax.imshow(values, aspect="auto", cmap="RdBu_r", vmin=center - bound, vmax=center + bound, interpolation="nearest")
        step = max(1, math.ceil(n_rows / 24))
        ax.set_yticks(range(0, n_rows, step), [str(x) for x in self.layers[::step]])
        ax.set_xlabel(self.column)
        ax.set_ylabel("layer")
        ax.set_title(f"{self.settings.get('patched', 'patched')}: {self.settings.get('metric', 'metric')}", fontsize=9)
        ax.figure.colorbar(image, ax=ax)

    def _state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        return {"values": self.values}, {"layers": list(self.layers), "column": self.column, "settings": self.settings}

    @classmethod
    def _from_state(cls, tensors: dict[str, Tensor], meta: dict[str, Any]) -> PatchingResult:
        return cls(tensors["values"], tuple(meta["layers"]), meta["column"], meta.get("settings", {}))

    def _html_table(self) -> pd.DataFrame:
        """The five cells with the largest metric."""
        return self.to_frame().sort_values("value", ascending=False).head(5)

    def __repr__(self) -> str:
        n_rows, n_cols = self.values.shape
        return (
            f"PatchingResult({self.settings.get('patched', 'patched')}, {n_rows} layers x {n_cols} {self.column}, "
            f"metric {self.settings.get('metric', '?')}: clean={self.settings.get('clean_metric', float('nan')):.4g}, "
            f"corrupted={self.settings.get('corrupted_metric', float('nan')):.4g})"
        )
