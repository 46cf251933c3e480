"""Robust aggregates of driver effects: medians, per-input shares, pooling, per-layer shares with CIs.

Driver effects are heavy-tailed over inputs: on a zoo model one input held 89% of a domain's total
effect and flipped the per-layer shares. The mean in :attr:`DriverEffects.effect` hides that; these
functions read ``per_input [input moe_layer expert]`` (run ``driver_effects(..., per_input=True)``).
:class:`DriverEffects` offers each as a method (``median()``, ``input_shares()``, ``robust_frame()``,
``layer_shares()``, ``DriverEffects.pool()``).

>>> import torch
>>> from moelens.analysis.drivers import DriverEffects
>>> per_input = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]], [[1.0, 97.0]]], dtype=torch.float64)
>>> e = DriverEffects(per_input.mean(0), (0,), 2, "exact", {"n_inputs": 3}, per_input)
>>> median_effect(e).tolist()  # the outlier input does not move the median
[[1.0, 0.0]]
>>> input_shares(e).round(decimals=2).tolist()
[0.01, 0.01, 0.98]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from moelens.errors import InvalidInputError
from moelens.lazy import pandas as pd
from moelens.stats import bootstrap_counts, percentile_ci

if TYPE_CHECKING:
    from .result import DriverEffects

__all__ = ["input_shares", "layer_shares", "median_effect", "pool_effects", "robust_frame"]


def _per_input(effects: DriverEffects) -> Tensor:
    if effects.per_input is None:
        raise InvalidInputError(
            "these DriverEffects have no per-input effects; rerun driver_effects(..., per_input=True) to get "
            "medians, shares and bootstrap intervals over inputs."
        )
    return effects.per_input


def median_effect(effects: DriverEffects) -> Tensor:
    """Median over inputs of each (layer, expert)'s effect ``[moe_layer expert]`` (for an even
    number of inputs, the mean of the two middle values)."""
    return torch.from_numpy(np.median(_per_input(effects).numpy(), axis=0))


def input_shares(effects: DriverEffects) -> Tensor:
    """Share of the summed effect (all layers and experts) that each input holds ``[input]``."""
    per_input = _per_input(effects).sum((1, 2))
    total = float(per_input.sum())
    return per_input / total if total > 0 else torch.zeros_like(per_input)


def robust_frame(effects: DriverEffects) -> pd.DataFrame:
    """Per (layer, expert): ``layer, expert, mean, median, top_input_share`` (share of the expert's
    summed effect from its largest input) and ``rank_mean``/``rank_median`` (1 = strongest)."""
    per_input = _per_input(effects)
    n_l, n_e = per_input.shape[1:]
    mean = per_input.mean(0).reshape(-1).numpy()
    median = median_effect(effects).reshape(-1).numpy()
    total = per_input.sum(0).reshape(-1)
    top = torch.where(total > 0, per_input.max(0).values.reshape(-1) / total.clamp_min(1e-300), 0.0).numpy()
    frame = pd.DataFrame({
        "layer": np.repeat(np.array(effects.moe_layers), n_e), "expert": np.tile(np.arange(n_e), n_l),
        "mean": mean, "median": median, "top_input_share": top,
    })
    for name in ("mean", "median"):
        frame[f"rank_{name}"] = frame[name].rank(ascending=False, method="first").astype(int)
    return frame


def pool_effects(results: Sequence[DriverEffects]) -> DriverEffects:
    """One :class:`DriverEffects` over the inputs of several (e.g. one per domain): per-input effects
    concatenated, mean recomputed. Layers, experts, method and the push must agree."""
    if not results:
        raise InvalidInputError("pool_effects needs at least one DriverEffects.")
    first = results[0]
    keys = ("magnitude", "sign", "positions")
    for i, other in enumerate(results[1:], 1):
        mine = (first.moe_layers, first.n_experts, first.method, *(first.settings.get(k) for k in keys))
        theirs = (other.moe_layers, other.n_experts, other.method, *(other.settings.get(k) for k in keys))
        if mine != theirs:
            raise InvalidInputError(
                f"result {i} cannot be pooled with result 0: (moe_layers, n_experts, method, magnitude, sign, positions) "
                f"are {theirs} vs {mine}."
            )
    per_input = torch.cat([_per_input(r) for r in results])
    settings = {**first.settings, "n_inputs": per_input.shape[0], "pooled": len(results)}
    return type(first)(per_input.mean(0), first.moe_layers, first.n_experts, first.method, settings, per_input)


def layer_shares(
    effects: DriverEffects, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> pd.DataFrame:
    """Per MoE layer: ``layer, share`` of the summed effect, its bootstrap interval over inputs
    ``lo, hi``, the share computed from per-expert medians (``median_share``) and the largest single
    input's share of that layer's effect (``top_input_share``)."""
    per_input = _per_input(effects)
    by_layer = per_input.sum(2)  # [input moe_layer]
    counts = bootstrap_counts(by_layer.shape[0], n_boot, seed)
    totals = counts @ by_layer  # [boot moe_layer]
    shares = totals / totals.sum(1, keepdim=True)
    point = by_layer.sum(0) / by_layer.sum() if float(by_layer.sum()) > 0 else torch.zeros(by_layer.shape[1])
    median = median_effect(effects).sum(1)
    layer_total = by_layer.sum(0)
    return pd.DataFrame({
        "layer": list(effects.moe_layers),
        "share": point.numpy(),
        "lo": [percentile_ci(shares[:, i], level)[0] for i in range(shares.shape[1])],
        "hi": [percentile_ci(shares[:, i], level)[1] for i in range(shares.shape[1])],
        "median_share": (median / median.sum()).numpy() if float(median.sum()) > 0 else np.zeros(len(median)),
        "top_input_share": torch.where(layer_total > 0, by_layer.max(0).values / layer_total.clamp_min(1e-300), 0.0).numpy(),
    })
