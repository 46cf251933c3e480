"""How well two driver-effect sweeps agree: rank correlations and overlap of the top experts.

Typical use: check a cheap estimate (``method="first_order"``) against the exact sweep on a
sample of the data before trusting it on all of it.

>>> import torch
>>> from moelens.analysis.drivers import DriverEffects
>>> a = DriverEffects(torch.tensor([[0.9, 0.1], [0.5, 0.3]]), (0, 1), 2, "exact")
>>> b = DriverEffects(torch.tensor([[0.8, 0.2], [0.6, 0.1]]), (0, 1), 2, "first_order")
>>> report = compare_effects(a, b, n=2)
>>> round(report.spearman, 6), report.top_overlap
(0.8, 1.0)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

import numpy as np

from moelens.errors import InvalidInputError
from moelens.results import Result

from .drivers.result import DriverEffects

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Agreement", "compare_effects"]


@dataclass(frozen=True, repr=False)
class Agreement(Result):
    """Agreement of two driver-effect tables over their common (layer, expert) pairs.

    ``spearman`` / ``kendall`` (tau-b): rank correlations of the effects (NaN if one side is
    constant); ``top_overlap``: ``|top_n(a) & top_n(b)| / n``; ``jaccard``: the same sets'
    intersection over union; ``pearson_log``: Pearson correlation of ``log10`` effects over pairs
    positive on both sides (scale agreement, NaN with fewer than 3); ``ratio``: ``sum(a) / sum(b)``.

    >>> import torch
    >>> a = DriverEffects(torch.tensor([[0.1, 0.5, 0.2]]), (0,), 3, "exact")
    >>> b = DriverEffects(torch.tensor([[0.2, 0.9, 0.3]]), (0,), 3, "first_order")
    >>> agreement = compare_effects(a, b, n=1)
    >>> agreement.spearman, agreement.top_overlap
    (1.0, 1.0)
    """

    n_pairs: int
    spearman: float
    kendall: float
    top_n: int
    top_overlap: float
    jaccard: float
    pearson_log: float
    ratio: float
    common_top: tuple[tuple[int, int], ...]

    FORMAT, VERSION = "moelens.Agreement", 1

    def to_dict(self) -> dict:
        return asdict(self)

    def to_frame(self) -> pd.DataFrame:
        """One row per statistic: ``statistic, value``."""
        import pandas as pd

        names = ("spearman", "kendall", "top_overlap", "jaccard", "pearson_log", "ratio")
        return pd.DataFrame({"statistic": names, "value": [float(getattr(self, n)) for n in names]})

    def _draw(self, ax) -> None:
        """The rank correlations and overlaps (in [-1, 1]) as bars."""
        frame = self.to_frame().iloc[:5]
        ax.bar(range(len(frame)), frame["value"].fillna(0.0), color="tab:blue")
        ax.set_xticks(range(len(frame)), frame["statistic"], rotation=30, ha="right")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_ylim(-1.05, 1.05)
        ax.set_title(f"agreement over {self.n_pairs} (layer, expert) pairs (top-{self.top_n})", fontsize=10)

    def _state(self) -> tuple[dict, dict]:
        return {}, self.to_dict()

    @classmethod
    def _from_state(cls, tensors: dict, meta: dict) -> Agreement:
        values = {f.name: meta[f.name] for f in fields(cls)}
        return cls(**{**values, "common_top": tuple(tuple(pair) for pair in values["common_top"])})

    def __repr__(self) -> str:
        return f"Agreement({self})"

    def __str__(self) -> str:
        return (
            f"{self.n_pairs} (layer, expert) pairs: Spearman {self.spearman:.3f}, Kendall {self.kendall:.3f}, "
            f"top-{self.top_n} overlap {self.top_overlap:.0%} (Jaccard {self.jaccard:.2f}), "
            f"log-scale Pearson {self.pearson_log:.3f}, sum ratio {self.ratio:.3g}"
        )


def compare_effects(a: DriverEffects, b: DriverEffects, n: int = 10) -> Agreement:
    """Compare two :class:`DriverEffects` on the MoE layers both contain.

    Top-``n`` sets are taken by each side's own ranking (:meth:`DriverEffects.top`, ties broken by
    layer then expert), restricted to the common layers.

    >>> import torch
    >>> exact = DriverEffects(torch.tensor([[0.1, 0.5], [0.3, 0.0]]), (0, 1), 2, "exact")
    >>> estimate = DriverEffects(torch.tensor([[0.2, 0.4], [0.1, 0.0]]), (0, 1), 2, "first_order")
    >>> round(compare_effects(exact, estimate, n=2).spearman, 3)
    0.8
    """
    from scipy.stats import kendalltau, spearmanr  # lazily: scipy adds ~1 s to `import moelens`

    if not isinstance(a, DriverEffects) or not isinstance(b, DriverEffects):
        raise InvalidInputError(f"compare_effects takes two DriverEffects; got {type(a).__name__} and {type(b).__name__}.")
    if a.n_experts != b.n_experts:
        raise InvalidInputError(f"cannot compare effects over {a.n_experts} and {b.n_experts} experts: not the same model.")
    layers = [layer for layer in a.moe_layers if layer in b.moe_layers]
    if not layers:
        raise InvalidInputError(f"no MoE layer in common: {list(a.moe_layers)} vs {list(b.moe_layers)}.")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidInputError(f"n={n!r} must be a positive int.")
    x = a.effect[[a.moe_layers.index(layer) for layer in layers]].reshape(-1).numpy()
    y = b.effect[[b.moe_layers.index(layer) for layer in layers]].reshape(-1).numpy()
    n = min(n, x.size)
    keys = [(layer, expert) for layer in layers for expert in range(a.n_experts)]
    top_x, top_y = _top(x, n), _top(y, n)
    common = top_x & top_y
    return Agreement(
        n_pairs=int(x.size),
        spearman=_corr(spearmanr, x, y),
        kendall=_corr(kendalltau, x, y),
        top_n=n,
        top_overlap=len(common) / n,
        jaccard=len(common) / len(top_x | top_y),
        pearson_log=_pearson_log(x, y),
        ratio=float(x.sum() / y.sum()) if y.sum() > 0 else float("nan"),
        common_top=tuple(keys[i] for i in sorted(common)),
    )


def _top(values: np.ndarray, n: int) -> set[int]:
    order = np.lexsort((np.arange(values.size), -values))  # descending, ties by position
    return set(order[:n].tolist())


def _corr(fn, x: np.ndarray, y: np.ndarray) -> float:
    if x.size < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    return float(fn(x, y)[0])


def _pearson_log(x: np.ndarray, y: np.ndarray) -> float:
    keep = (x > 0) & (y > 0)
    if keep.sum() < 3:
        return float("nan")
    lx, ly = np.log10(x[keep]), np.log10(y[keep])
    if np.all(lx == lx[0]) or np.all(ly == ly[0]):
        return float("nan")
    value = float(np.corrcoef(lx, ly)[0, 1])
    return value if math.isfinite(value) else float("nan")
