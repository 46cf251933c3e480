"""The result type of :func:`moelens.routing_mediation`: effects per pair, their means, tables, plots."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from jaxtyping import Float
from torch import Tensor

from moelens.errors import InvalidInputError
from moelens.results import Result, new_figure

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = ["Mediation"]

_TENSORS = ("total", "all_routing", "indirect", "by_layer", "by_position")


class Mediation(Result):
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
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     Mediation.load(med.save(f"{d}/med")).per_pair_indirect.shape
    torch.Size([1, 1, 2])
    """

    FORMAT, VERSION = "moelens.Mediation", 1

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
        import pandas as pd

        return pd.DataFrame({
            "layer": np.repeat(np.array(self.moe_layers, dtype=np.int64), n_e),
            "expert": np.tile(np.arange(n_e), n_l),
            "indirect": values,
            "share": values / total if total != 0 else np.full_like(values, np.nan),
            "rank": rank,
        })

    def top(self, n: int = 10) -> pd.DataFrame:
        """The ``n`` (layer, expert) pairs with the largest absolute indirect effect."""
        from moelens._checks import check_count

        check_count("n", n, 1)
        frame = self.to_frame().dropna(subset=["rank"]).sort_values("rank")
        return frame.head(n).reset_index(drop=True)

    def summary(self) -> pd.DataFrame:
        """``effect, value``: total, all_routing, direct, and each layer's ``by_layer``."""
        import pandas as pd

        rows = [("total", self.total), ("all_routing", self.all_routing), ("direct", self.direct)]
        rows += [(f"layer {layer}", float(v)) for layer, v in zip(self.moe_layers, self.by_layer, strict=True)]
        return pd.DataFrame(rows, columns=["effect", "value"])

    # -- plots ----------------------------------------------------------------------------------------
    def _figure(self) -> Figure:
        """Indirect effect per (layer, expert) and per (layer, position), diverging colours around
        0; the title gives total, all-routing and direct effects."""
        n_l, n_e = self.indirect.shape
        n_pos = self.per_pair_by_position.shape[-1]
        fig = new_figure((min(max(8.0, 0.25 * (n_e + n_pos) + 3.0), 22.0), min(max(2.6, 0.3 * n_l + 1.5), 10.0)))
        axes = fig.subplots(1, 2, width_ratios=[max(n_e, 4), max(n_pos, 4)])
        self._draw(axes[0])
        self._heatmap(axes[1], self.by_position.numpy(), "position", "layer routing patched at one position")
        from moelens.viz.findings import plural  # moelens.viz loads circuitsvis: only when drawn

        metric = self.settings.get("metric", "metric")
        fig.suptitle(f"{metric}: total {self.total:.3g}, via all routing {self.all_routing:.3g}, direct {self.direct:.3g} ({plural(self.n_pairs, 'pair')})", fontsize=10)
        return fig

    def _draw(self, ax) -> None:
        self._heatmap(ax, self.indirect.numpy(), "expert", "indirect effect per expert")

    def _heatmap(self, ax, values: np.ndarray, xlabel: str, title: str) -> None:
        n_l = values.shape[0]
        finite = values[np.isfinite(values)]
        bound = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
        image = ax.imshow(values, aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound, interpolation="nearest")
        step = max(1, math.ceil(n_l / 24))
        ax.set_yticks(range(0, n_l, step), [str(x) for x in self.moe_layers[::step]])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("layer")
        ax.set_title(title, fontsize=9)
        ax.figure.colorbar(image, ax=ax, label="change of the metric")

    # -- persistence (Result.save / Result.load) ---------------------------------------------------
    def _state(self) -> tuple[dict[str, Tensor], dict]:
        tensors = {name: getattr(self, f"per_pair_{name}") for name in _TENSORS}
        return tensors, {"moe_layers": list(self.moe_layers), "n_experts": self.n_experts, "settings": self.settings}

    @classmethod
    def _from_state(cls, tensors: dict[str, Tensor], meta: dict) -> Mediation:
        return cls(*(tensors[name] for name in _TENSORS), tuple(meta["moe_layers"]), meta["n_experts"], meta.get("settings", {}))

    def _html_table(self) -> pd.DataFrame:
        return self.top(5)

    def __repr__(self) -> str:
        from moelens.viz.findings import plural

        best = self.top(1)
        lead = f", top L{int(best.layer[0])}E{int(best.expert[0])}={best.indirect[0]:.3g}" if len(best) else ""
        return (
            f"Mediation({self.settings.get('metric', 'metric')}, {plural(self.n_pairs, 'pair')}, total={self.total:.3g}, "
            f"all_routing={self.all_routing:.3g}, direct={self.direct:.3g}{lead})"
        )
