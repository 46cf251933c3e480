"""Static figures of routing statistics (matplotlib, Agg).

Figures are built with ``matplotlib.figure.Figure`` directly rather than ``pyplot``: no global
figure registry to leak, no backend switch forced on the caller's session, and saving goes
through the Agg canvas. Each function returns the Figure (it displays in Jupyter) and writes it
to ``path`` when one is given.

>>> import torch
>>> from moelens.analysis.routing_stats import RoutingStats
>>> from moelens.metrics import topk_mask_from_indices
>>> stats = RoutingStats(["a", "b"], moe_layers=(0, 1), n_experts=4, top_k=1)
>>> topk = topk_mask_from_indices(torch.tensor([[0], [1]]), 4)
>>> for d in ("a", "b"):
...     stats.accumulate_layers(d, topk.expand(2, 2, 4), torch.full((2, 2, 4), 0.25))
>>> fig = plot_cwas_heatmap(stats)
>>> len(fig.axes)  # one heatmap per domain, plus the shared colour bar
3
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from moelens.errors import InvalidInputError
from moelens.results import new_figure, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from moelens.analysis.routing_stats import RoutingStats

__all__ = ["heatmap_values", "plot_cwas_heatmap", "plot_general_vs_domain"]

_METRICS = ("cwas", "lift", "activation_rate", "entropy")




def heatmap_values(stats: RoutingStats, metric: str) -> torch.Tensor:
    """``metric`` (cwas, lift, activation_rate, entropy) as ``[domain moe_layer expert]``."""
    if metric not in _METRICS:
        raise InvalidInputError(f"metric must be one of {list(_METRICS)}, got {metric!r}.")
    if metric == "cwas":
        return stats.cwas()  # [domain moe_layer expert]
    if metric == "lift":
        return stats.cwas_lift()
    return getattr(stats, metric)


def plot_cwas_heatmap(
    stats: RoutingStats,
    domain: str | None = None,
    path: str | Path | None = None,
    metric: str = "cwas",
) -> Figure:
    """Heatmap of ``metric`` (default CWAS) over MoE layer (rows) x expert (columns); the same
    figure as ``stats.plot(path=path, domain=domain, metric=metric)`` (kept as an alias).

    One panel for ``domain``, or one per domain (stacked, shared colour scale) when None.
    ``metric`` is one of cwas, lift (diverging colours around 0), activation_rate, entropy.
    """
    values = heatmap_values(stats, metric)
    domains = list(stats.domains) if domain is None else [domain]
    for d in domains:
        if d not in stats.domains:
            raise InvalidInputError(f"unknown domain {d!r}; stats has {list(stats.domains)}.")
    panels = values[[stats.domains.index(d) for d in domains]].numpy()  # [panel layer expert]
    finite = panels[np.isfinite(panels)]  # entropy is NaN for never-routed experts
    if metric == "lift":
        bound = float(np.abs(finite).max()) if finite.size else 0.0
        bound = bound if bound > 0 else 1.0  # symmetric around 0, never an empty range
        vmin, vmax, cmap = -bound, bound, "RdBu_r"
    else:
        vmin = float(finite.min()) if finite.size else 0.0
        vmax = float(finite.max()) if finite.size else 1.0
        cmap = "viridis"
    n_layers, n_experts = panels.shape[1:]
    width = min(max(6.0, 0.18 * n_experts + 2.0), 22.0)
    height = min(max(2.0, 0.22 * n_layers + 1.0), 12.0)
    fig = new_figure((width, height * len(domains)))
    axes = fig.subplots(len(domains), 1, squeeze=False)[:, 0]
    for ax, d, panel in zip(axes, domains, panels, strict=True):
        image = ax.imshow(
            panel, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest"
        )
        ax.set_title(f"{metric} — {d}")
        ax.set_ylabel("layer")
        step = max(1, math.ceil(n_layers / 24))  # keep tick labels readable on deep models
        ax.set_yticks(range(0, n_layers, step), [str(x) for x in stats.moe_layers[::step]])
    axes[-1].set_xlabel("expert")
    fig.colorbar(image, ax=list(axes), label=metric)
    return save_figure(fig, path)


def _label_slots(ax, marks: list[tuple[float, float, str]], gap: float = 0.11) -> list[float]:
    """Heights (axes fraction) of labels in a column right of the axes: evenly spaced near the points,
    assigned to the points by the shortest total line length, so no two leader lines cross (a
    minimum-length matching of segments never crosses) and no two labels overlap."""
    from itertools import permutations

    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    points = [((x - x0) / (x1 - x0) * 1.6, (y - y0) / (y1 - y0)) for x, y, _ in marks]  # axes fraction, x scaled by the aspect
    n = len(points)
    start = min(max(sum(p[1] for p in points) / n - gap * (n - 1) / 2, 0.04), 0.96 - gap * (n - 1))
    slots = [start + gap * i for i in range(n)]
    order = min(permutations(range(n)), key=lambda perm: sum(math.hypot(1.03 * 1.6 - px, slots[perm[i]] - py) for i, (px, py) in enumerate(points)))
    return [slots[i] for i in order]


def plot_general_vs_domain(
    stats: RoutingStats, path: str | Path | None = None, annotate: int = 5, general=None
) -> Figure:
    """(Alias of ``stats.plot(view="general_vs_domain")``.) Scatter of every (layer, expert): mean
    activation rate over domains (x) against domain specificity (y), coloured by layer (one colour
    per MoE layer, integer ticks).

    General experts sit bottom-right (often used, everywhere); domain experts top. The
    ``annotate`` best general experts are circled and labelled ``L{layer}E{expert}`` in a column
    beside the plot, joined to their points by thin lines (labels never overlap, however close the
    points); they are the first rows of ``general`` (default ``stats.general_experts(top=annotate)``),
    so a table of that frame next to the figure shows the same experts. A dashed line marks the
    uniform-routing rate ``top_k / n_experts``.
    """
    import matplotlib
    from matplotlib.colors import BoundaryNorm

    rate = stats.activation_rate.mean(0)  # [moe_layer expert]
    spec = stats.domain_specificity()  # [moe_layer expert]
    n_layers = len(stats.moe_layers)
    layer_index = torch.arange(n_layers).unsqueeze(1).expand_as(rate)  # colour by position among the MoE layers
    fig = new_figure((7.0, 4.5))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["viridis"].resampled(max(n_layers, 1))
    norm = BoundaryNorm(np.arange(n_layers + 1) - 0.5, max(n_layers, 1))
    points = ax.scatter(rate.reshape(-1).numpy(), spec.reshape(-1).numpy(), c=layer_index.reshape(-1).numpy(),
                        cmap=cmap, norm=norm, s=14, alpha=0.8)
    step = max(1, math.ceil(n_layers / 16))  # at most 16 tick labels
    bar = fig.colorbar(points, ax=ax, location="bottom", shrink=0.6, aspect=40, label="MoE layer")
    bar.set_ticks(range(0, n_layers, step), labels=[str(x) for x in stats.moe_layers[::step]])
    if stats.top_k is not None:
        ax.axvline(stats.top_k / stats.n_experts, color="grey", ls="--", lw=1, label="top_k / n")
        ax.legend(loc="upper right", frameon=False)
    picked = (stats.general_experts(top=annotate) if general is None else general).head(max(annotate, 0))
    marks = [(float(rate[stats.moe_layers.index(int(r.layer)), int(r.expert)]), float(spec[stats.moe_layers.index(int(r.layer)), int(r.expert)]),
              f"L{int(r.layer)}E{int(r.expert)}") for r in picked.itertuples(index=False)]
    if marks:
        ax.scatter([m[0] for m in marks], [m[1] for m in marks], s=40, facecolors="none", edgecolors="black", linewidths=0.8)
        for (x, y, label), slot in zip(marks, _label_slots(ax, marks), strict=True):
            ax.annotate(label, (x, y), xytext=(1.03, slot), textcoords="axes fraction", fontsize=7, va="center",
                        arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "grey"})
    ax.set_xlabel("mean activation rate over domains")
    ax.set_ylabel("domain specificity")
    ax.set_title(f"general vs domain experts ({len(stats.domains)} domains)")
    return save_figure(fig, path)
