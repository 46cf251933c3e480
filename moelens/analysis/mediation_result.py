"""The result type of :func:`moelens.routing_mediation`: effects per pair, their means, tables, plots."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from jaxtyping import Float
from matplotlib.figure import Figure
from torch import Tensor

from moelens.errors import InvalidInputError

from ._io import load_sidecar, save_figure, save_sidecar

__all__ = ["Mediation"]

_FORMAT = "moelens.Mediation"
_VERSION = 1
_TENSORS = ("total", "all_routing", "indirect", "by_layer", "by_position")


class Mediation:
    """Effects of an input change on a metric, split by the routing they go through.

    Per pair (float64, CPU): ``total [pair]``, ``all_routing [pair]``, ``indirect [pair moe_layer
    expert]`` (NaN for experts not computed), ``by_layer [pair moe_layer]``, ``by_position [pair
    moe_layer pos]`` (NaN past a pair's length). The properties without the ``per_pair`` prefix
    average over pairs (``by_position`` over the pairs that have that position). Definitions:
    :mod:`moelens.analysis.mediation`.

    >>> import torch
    >>> med = Mediation(torch.tensor([1.0]), torch.tensor([0.75]), torch.tensor([[[0.5, -0.25]]]),
    ...                 torch.tensor([[0.75]]), torch.tensor([[[0.5, 0.25]]]), (1,), 2)
    >>> med.direct, med.top(1)[["layer", "expert", "indirect"]].values.tolist()
    (0.25, [[1.0, 0.0, 0.5]])
    """

    def __init__(self, total, all_routing, indirect, by_layer, by_position, moe_layers, n_experts, settings=None):
        self.per_pair_total = total.detach().cpu().double()
        self.per_pair_all_routing = all_routing.detach().cpu().double()
        self.per_pair_indirect = indirect.detach().cpu().double()
        self.per_pair_by_layer = by_layer.detach().cpu().double()
        self.per_pair_by_position = by_position.detach().cpu().double()
        self.moe_layers = tuple(int(x) for x in moe_layers)
        self.n_experts = int(n_experts)
        self.settings = dict(settings or {})
        n, n_l = len(self.per_pair_total), len(self.moe_layers)
        expected = {
            "all_routing": (n,), "indirect": (n, n_l, self.n_experts), "by_layer": (n, n_l),
        }
        for name, shape in expected.items():
            got = tuple(getattr(self, f"per_pair_{name}").shape)
            if got != shape:
                raise InvalidInputError(f"Mediation {name} has shape {got}; expected {shape}.")
        if tuple(self.per_pair_by_position.shape[:2]) != (n, n_l):
            raise InvalidInputError(f"Mediation by_position has shape {tuple(self.per_pair_by_position.shape)}; expected ({n}, {n_l}, pos).")

    # -- means over pairs -------------------------------------------------------------------------
    @property
    def n_pairs(self) -> int:
        return len(self.per_pair_total)

    @property
    def total(self) -> float:
        """Mean of ``metric(corrupted) - metric(clean)``."""
        return float(self.per_pair_total.mean())

    @property
    def all_routing(self) -> float:
        """Mean effect of patching the routing of every MoE layer."""
        return float(self.per_pair_all_routing.mean())

    @property
    def direct(self) -> float:
        """``total - all_routing``: the effect that does not go through routing decisions."""
        return float((self.per_pair_total - self.per_pair_all_routing).mean())

    @property
    def indirect(self) -> Float[Tensor, "moe_layer expert"]:
        return self.per_pair_indirect.mean(0)

    @property
    def by_layer(self) -> Float[Tensor, " moe_layer"]:
        return self.per_pair_by_layer.mean(0)

    @property
    def by_position(self) -> Float[Tensor, "moe_layer pos"]:
        return self.per_pair_by_position.nanmean(0)

    # -- tables -----------------------------------------------------------------------------------
    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, expert): ``layer, expert, indirect, share`` (of the total effect),
        ``rank`` (by absolute indirect effect, 1 = largest; experts not computed are NaN)."""
        n_l, n_e = self.indirect.shape
        values = self.indirect.reshape(-1).numpy()
        key = np.where(np.isnan(values), -np.inf, np.abs(values))
        order = np.lexsort((np.arange(n_l * n_e), -key))
        rank = np.empty(n_l * n_e)
        rank[order] = np.arange(1, n_l * n_e + 1)
        rank[np.isnan(values)] = np.nan
        total = self.total
        return pd.DataFrame({
            "layer": np.repeat(np.array(self.moe_layers, dtype=np.int64), n_e),
            "expert": np.tile(np.arange(n_e), n_l),
            "indirect": values,
            "share": values / total if total != 0 else np.full_like(values, np.nan),
            "rank": rank,
        })

    def top(self, n: int = 10) -> pd.DataFrame:
        """The ``n`` (layer, expert) pairs with the largest absolute indirect effect."""
        from .._checks import check_count

        check_count("n", n, 1)
        frame = self.to_frame().dropna(subset=["rank"]).sort_values("rank")
        return frame.head(n).reset_index(drop=True)

    def summary(self) -> pd.DataFrame:
        """``effect, value``: total, all_routing, direct, and each layer's ``by_layer``."""
        rows = [("total", self.total), ("all_routing", self.all_routing), ("direct", self.direct)]
        rows += [(f"layer {layer}", float(v)) for layer, v in zip(self.moe_layers, self.by_layer, strict=True)]
        return pd.DataFrame(rows, columns=["effect", "value"])

    # -- plots ------------------------------------------------------------------------------------
    def plot(self, path: str | Path | None = None) -> Figure:
        """Indirect effect per (layer, expert) and per (layer, position), diverging colours around
        0; the title gives total, all-routing and direct effects. Returns the Figure."""
        n_l, n_e = self.indirect.shape
        n_pos = self.per_pair_by_position.shape[-1]
        fig = Figure(figsize=(min(max(8.0, 0.25 * (n_e + n_pos) + 3.0), 22.0), min(max(2.6, 0.3 * n_l + 1.5), 10.0)), layout="constrained")
        axes = fig.subplots(1, 2, width_ratios=[max(n_e, 4), max(n_pos, 4)])
        for ax, values, xlabel, title in (
            (axes[0], self.indirect.numpy(), "expert", "indirect effect per expert"),
            (axes[1], self.by_position.numpy(), "position", "layer routing patched at one position"),
        ):
            finite = values[np.isfinite(values)]
            bound = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
            image = ax.imshow(values, aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound, interpolation="nearest")
            step = max(1, math.ceil(n_l / 24))
            ax.set_yticks(range(0, n_l, step), [str(x) for x in self.moe_layers[::step]])
            ax.set_xlabel(xlabel)
            ax.set_ylabel("layer")
            ax.set_title(title, fontsize=9)
            fig.colorbar(image, ax=ax)
        metric = self.settings.get("metric", "metric")
        fig.suptitle(f"{metric}: total {self.total:.3g}, via all routing {self.all_routing:.3g}, direct {self.direct:.3g} ({self.n_pairs} pairs)", fontsize=10)
        return save_figure(fig, path)

    # -- persistence ------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``<path>.safetensors`` and ``<path>.json``; :meth:`load` reads them back.

        >>> import tempfile, torch
        >>> med = Mediation(torch.zeros(1), torch.zeros(1), torch.zeros(1, 1, 2), torch.zeros(1, 1), torch.zeros(1, 1, 3), (0,), 2)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     Mediation.load(med.save(f"{d}/med")).per_pair_indirect.shape
        torch.Size([1, 1, 2])
        """
        tensors = {name: getattr(self, f"per_pair_{name}") for name in _TENSORS}
        meta = {"moe_layers": list(self.moe_layers), "n_experts": self.n_experts,
                "settings": self.settings}
        return save_sidecar(path, tensors, meta, _FORMAT, _VERSION)

    @classmethod
    def load(cls, path: str | Path) -> Mediation:
        """Read what :meth:`save` wrote (either file's path, or the common stem)."""
        tensors, meta = load_sidecar(path, _FORMAT, _VERSION, "Mediation")
        return cls(*(tensors[name] for name in _TENSORS), tuple(meta["moe_layers"]), meta["n_experts"], meta.get("settings", {}))

    def _repr_html_(self) -> str:
        return f"<p><code>{self!r}</code></p>" + self.top(5).to_html(index=False, float_format="{:.4g}".format)

    def __repr__(self) -> str:
        best = self.top(1)
        lead = f", top L{int(best.layer[0])}E{int(best.expert[0])}={best.indirect[0]:.3g}" if len(best) else ""
        return (
            f"Mediation({self.settings.get('metric', 'metric')}, {self.n_pairs} pairs, total={self.total:.3g}, "
            f"all_routing={self.all_routing:.3g}, direct={self.direct:.3g}{lead})"
        )
