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


def plot_general_vs_domain(
    stats: RoutingStats, path: str | Path | None = None, annotate: int = 5
) -> Figure:
    """(Alias of ``stats.plot(view="general_vs_domain")``.) Scatter of every (layer, expert): mean activation rate over domains (x) against domain
    specificity (y), coloured by layer.

    General experts sit bottom-right (often used, everywhere); domain experts top. The
    ``annotate`` best general experts (see ``RoutingStats.general_experts``) are labelled
    ``L{layer}E{expert}``; a dashed line marks the uniform-routing rate ``top_k / n_experts``.
    """
    rate = stats.activation_rate.mean(0)  # [moe_layer expert]
    spec = stats.domain_specificity()  # [moe_layer expert]
    layers = torch.tensor(stats.moe_layers).unsqueeze(1).expand_as(rate)
    fig = new_figure((6.5, 4.5))
    ax = fig.subplots()
    points = ax.scatter(
        rate.reshape(-1).numpy(), spec.reshape(-1).numpy(), c=layers.reshape(-1).numpy(),
        cmap="viridis", s=14, alpha=0.8,
    )
    fig.colorbar(points, ax=ax, label="layer")
    if stats.top_k is not None:
        ax.axvline(stats.top_k / stats.n_experts, color="grey", ls="--", lw=1, label="top_k / n")
        ax.legend(loc="upper right", frameon=False)
    if annotate > 0:
        for row in stats.general_experts(top=annotate).itertuples():
            i = stats.moe_layers.index(row.layer)
            ax.annotate(
                f"L{row.layer}E{row.expert}",
                (float(rate[i, row.expert]), float(spec[i, row.expert])),
                fontsize=7, xytext=(3, 3), textcoords="offset points",
            )
    ax.set_xlabel("mean activation rate over domains")
    ax.set_ylabel("domain specificity")
    ax.set_title(f"general vs domain experts ({len(stats.domains)} domains)")
    return save_figure(fig, path)
