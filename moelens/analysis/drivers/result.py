"""``DriverEffects``: the result of a driver-effect sweep, with tables, plots and persistence."""

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from jaxtyping import Float
from torch import Tensor

from moelens.errors import InvalidInputError
from moelens.results import Result

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = ["DriverEffects", "calibration_note"]



@dataclass(repr=False)
class DriverEffects(Result):
    """Driver effect of every (MoE layer, expert): mean KL over inputs, in nats.

    ``effect [moe_layer expert]`` (float64, CPU); ``per_input [input moe_layer expert]`` when the
    sweep was asked for it; ``moe_layers`` are model layer indices (the ``L`` of ``blocks.{L}.moe``)
    in the order of the rows; ``settings`` records how the numbers were made (perturbation,
    positions, method options, number of inputs).

    >>> import torch
    >>> effects = DriverEffects(torch.tensor([[0.1, 0.5], [0.3, 0.0]]), (0, 1), 2, "exact")
    >>> effects.top(2)[["layer", "expert"]].values.tolist()
    [[0, 1], [1, 0]]
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     torch.equal(DriverEffects.load(effects.save(f"{d}/drivers")).effect, effects.effect)
    True
    """

    FORMAT, VERSION = "moelens.DriverEffects", 1

    effect: Float[Tensor, "moe_layer expert"]
    moe_layers: tuple[int, ...]
    n_experts: int
    method: str
    settings: dict[str, Any] = field(default_factory=dict)
    per_input: Float[Tensor, "input moe_layer expert"] | None = None

    def __post_init__(self) -> None:
        self.moe_layers = tuple(int(layer) for layer in self.moe_layers)
        self.effect = self.effect.detach().cpu().double()
        expected = (len(self.moe_layers), int(self.n_experts))
        if tuple(self.effect.shape) != expected:
            raise InvalidInputError(f"effect has shape {tuple(self.effect.shape)}; expected {expected} [moe_layer expert].")
        if self.per_input is not None:
            self.per_input = self.per_input.detach().cpu().double()
            if tuple(self.per_input.shape[1:]) != expected:
                raise InvalidInputError(
                    f"per_input has shape {tuple(self.per_input.shape)}; expected (n_inputs, *{expected})."
                )

    @property
    def n_inputs(self) -> int:
        return int(self.settings.get("n_inputs", 0 if self.per_input is None else self.per_input.shape[0]))

    # -- tables ---------------------------------------------------------------------------------
    def to_frame(self) -> "pd.DataFrame":
        """One row per (layer, expert), in that order: ``layer, expert, effect, rank, share``
        (fraction of the summed effect), plus ``std`` and ``sem`` over inputs with ``per_input``."""
        import pandas as pd

        n_l, n_e = self.effect.shape
        effect = self.effect.reshape(-1).numpy()
        order = np.lexsort((np.arange(n_l * n_e), -effect))  # effect descending, then (layer, expert)
        rank = np.empty(n_l * n_e, dtype=np.int64)
        rank[order] = np.arange(1, n_l * n_e + 1)
        total = float(effect.sum())
        frame = pd.DataFrame(
            {
                "layer": np.repeat(np.array(self.moe_layers, dtype=np.int64), n_e),
                "expert": np.tile(np.arange(n_e), n_l),
                "effect": effect,
                "rank": rank,
                "share": effect / total if total > 0 else np.zeros_like(effect),
            }
        )
        if self.per_input is not None and self.per_input.shape[0] > 1:
            std = self.per_input.std(0).reshape(-1).numpy()
            frame["std"] = std
            frame["sem"] = std / math.sqrt(self.per_input.shape[0])
        return frame

    def top(self, n: int = 10) -> "pd.DataFrame":
        """The ``n`` strongest drivers: ``layer, expert, effect, rank`` (ties by layer, expert).

        >>> e = DriverEffects(torch.tensor([[0.1, 0.5], [0.3, 0.0]], dtype=torch.float64), (0, 2), 2, "exact")
        >>> e.top(2)[["layer", "expert", "rank"]].values.tolist()
        [[0, 1, 1], [2, 0, 2]]
        """
        from ..._checks import check_count

        check_count("n", n, 1, fix="how many of the strongest drivers; head(-n) semantics are not offered")
        frame = self.to_frame().sort_values("rank")
        return frame[["layer", "expert", "effect", "rank"]].head(n).reset_index(drop=True)

    def layer_totals(self) -> "pd.DataFrame":
        """Per MoE layer: ``layer, total`` (sum over experts), ``share`` of the grand total,
        ``max`` and ``top_expert`` — the "driver experts sit in the middle layers" profile.

        >>> e = DriverEffects(torch.tensor([[0.1, 0.5], [0.3, 0.1]]), (0, 2), 2, "exact")
        >>> e.layer_totals()["share"].round(2).tolist()
        [0.6, 0.4]
        """
        import pandas as pd

        total = self.effect.sum(1)
        grand = float(total.sum())
        return pd.DataFrame(
            {
                "layer": list(self.moe_layers),
                "total": total.numpy(),
                "share": (total / grand).numpy() if grand > 0 else np.zeros(len(self.moe_layers)),
                "max": self.effect.max(1).values.numpy(),
                "top_expert": self.effect.argmax(1).numpy(),
            }
        )

    def middle_share(self) -> float:
        """Share of the summed effect held by the middle MoE layers, ``n // 3 .. n - n // 3 - 1``
        of ``n``. Compare it with :meth:`middle_share_uniform`, the share a flat profile gives at
        this depth (0.5 for 8 layers, 0.375 for 16, 0.5 for 4: not 1/3).

        >>> e = DriverEffects(torch.ones(8, 2), tuple(range(8)), 2, "exact")
        >>> e.middle_share(), e.middle_share_uniform()
        (0.5, 0.5)
        """
        n = len(self.moe_layers)
        lo, hi = n // 3, n - n // 3
        total = float(self.effect.sum())
        return float(self.effect[lo:hi].sum()) / total if total > 0 else float("nan")

    def middle_share_uniform(self) -> float:
        """The :meth:`middle_share` of a flat profile (every layer the same total): the fraction
        of the layers that count as middle at this depth.

        >>> DriverEffects(torch.ones(16, 2), tuple(range(16)), 2, "exact").middle_share_uniform()
        0.375
        """
        n = len(self.moe_layers)
        return (n - 2 * (n // 3)) / n if n else float("nan")

    # -- robust aggregates over inputs (moelens.analysis.drivers.robust; need per_input) ---------
    def median(self) -> Tensor:
        """Median over inputs of each effect ``[moe_layer expert]`` (heavy tails: one input can
        dominate the mean).

        >>> import torch
        >>> per_input = torch.tensor([[[1.0]], [[2.0]], [[90.0]]], dtype=torch.float64)
        >>> DriverEffects(per_input.mean(0), (0,), 1, "exact", {}, per_input).median().tolist()
        [[2.0]]
        """
        from .robust import median_effect

        return median_effect(self)

    def input_shares(self) -> Tensor:
        """Share of the summed effect held by each input ``[input]``."""
        from .robust import input_shares

        return input_shares(self)

    def robust_frame(self) -> "pd.DataFrame":
        """Per (layer, expert): mean, median, the largest input's share, ranks by mean and by median."""
        from .robust import robust_frame

        return robust_frame(self)

    def layer_shares(self, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> "pd.DataFrame":
        """Per MoE layer: share of the summed effect with a bootstrap interval over inputs, the
        median-based share and the largest input's share."""
        from .robust import layer_shares

        return layer_shares(self, n_boot, seed, level)

    @classmethod
    def pool(cls, results: "list[DriverEffects]") -> "DriverEffects":
        """One result over the inputs of several (same layers, experts, method and push)."""
        from .robust import pool_effects

        return pool_effects(results)

    # -- plots (Result.plot) -----------------------------------------------------------------------
    def _figure(self, view: str = "heatmap", log: bool = False) -> "Figure":
        """``view="heatmap"``: layer x expert heatmap of the effect (``log=True``: log colour scale,
        effects often span orders of magnitude); ``view="layer_totals"``: the summed effect per MoE
        layer, the middle layers shaded and their share in the title (with a flat profile's share)."""
        from moelens.results import new_figure

        n_l, n_e = self.effect.shape
        if view == "layer_totals":
            fig = new_figure((max(5.0, 0.3 * n_l + 2.0), 3.5))
            self._draw_layer_totals(fig.add_subplot())
            return fig
        if view != "heatmap":
            raise InvalidInputError(f"view={view!r}: pass 'heatmap' or 'layer_totals'.")
        fig = new_figure((min(max(6.0, 0.18 * n_e + 2.0), 22.0), min(max(2.5, 0.25 * n_l + 1.2), 12.0)))
        self._draw(fig.add_subplot(), log=log)
        return fig

    def _draw(self, ax, log: bool = False) -> None:
        from matplotlib.colors import LogNorm

        values = self.effect.numpy()
        n_l = values.shape[0]
        norm = None
        if log:
            positive = values[values > 0]
            floor = float(positive.min()) if positive.size else 1e-12
            norm = LogNorm(vmin=floor, vmax=max(float(values.max()), floor * 10))
            values = np.where(values > 0, values, np.nan)
        image = ax.imshow(values, aspect="auto", cmap="magma", norm=norm, interpolation="nearest")
        step = max(1, math.ceil(n_l / 24))
        ax.set_yticks(range(0, n_l, step), [str(x) for x in self.moe_layers[::step]])
        ax.set_xlabel("expert")
        ax.set_ylabel("layer")
        ax.set_title(f"driver effect, KL (nats) — {self.estimator()}, {self._push()}", fontsize=8)
        ax.figure.colorbar(image, ax=ax, label="KL (nats)")

    def _draw_layer_totals(self, ax) -> None:
        totals = self.layer_totals()
        n = len(self.moe_layers)
        ax.axvspan(n // 3 - 0.5, n - n // 3 - 0.5, color="grey", alpha=0.15, lw=0, label="middle third")
        ax.bar(range(n), totals["total"], color="tab:red")
        step = max(1, math.ceil(n / 24))
        ax.set_xticks(range(0, n, step), [str(x) for x in self.moe_layers[::step]])
        ax.set_xlabel("layer")
        ax.set_ylabel(f"sum of driver effects (nats, {self.method.replace('_', '-')})")
        ax.set_title(f"driver effect per layer — middle layers hold {self.middle_share():.0%} "
                     f"(flat profile: {self.middle_share_uniform():.0%})")
        ax.legend(loc="upper right", frameon=False)

    def plot_heatmap(self, path: str | Path | None = None, log: bool = False) -> "Figure":
        """Alias of ``plot(path=path, log=log)``, kept for one release."""
        return self.plot(path=path, log=log)

    def plot_layer_totals(self, path: str | Path | None = None) -> "Figure":
        """Alias of ``plot(path=path, view="layer_totals")``, kept for one release."""
        return self.plot(path=path, view="layer_totals")

    def estimator(self) -> str:
        """What the numbers are, for labels: ``"exact KL"``, or the gradient method with its measured
        calibration against exact (:mod:`.calibration`).

        >>> DriverEffects(torch.zeros(1, 2), (0,), 2, "first_order").estimator()
        'first-order estimate (uncalibrated)'
        """
        if self.method == "exact":
            return "exact KL"
        note = calibration_note(self.settings)
        return f"{self.method.replace('_', '-')} estimate ({note or 'uncalibrated'})"

    def _push(self) -> str:
        magnitude, sign = self.settings.get("magnitude"), self.settings.get("sign")
        return f"push {'+' if sign == 1 else '-'}{magnitude}" if magnitude is not None else "push"

    # -- persistence (Result.save / Result.load) ----------------------------------------------------
    def _state(self) -> tuple[dict[str, Tensor], dict]:
        tensors = {"effect": self.effect}
        if self.per_input is not None:
            tensors["per_input"] = self.per_input
        meta = {"moe_layers": list(self.moe_layers), "n_experts": self.n_experts, "method": self.method, "settings": self.settings}
        return tensors, meta

    @classmethod
    def _from_state(cls, tensors: dict[str, Tensor], meta: dict) -> "DriverEffects":
        return cls(tensors["effect"], tuple(meta["moe_layers"]), meta["n_experts"], meta["method"],
                   meta.get("settings", {}), tensors.get("per_input"))

    def _repr_html_(self) -> str:  # notebooks: summary table and heatmap
        from moelens.viz.notebook import driver_effects_html

        return driver_effects_html(self)

    def __repr__(self) -> str:
        best = self.top(1)
        lead = f", top L{int(best.layer[0])}E{int(best.expert[0])}={best.effect[0]:.3g}" if len(best) else ""
        note = calibration_note(self.settings)
        return (
            f"DriverEffects({self.method}{f' [{note}]' if note else ''}, moe_layers={list(self.moe_layers)}, "
            f"n_experts={self.n_experts}, n_inputs={self.n_inputs}, {self._push()}{lead})"
        )


def calibration_note(settings: dict[str, Any]) -> str:
    """``"calibrated on 8 inputs: sum 0.70x exact, Spearman 0.95"``, or ``""`` without calibration.

    >>> calibration_note({"calibration": {"n_inputs": 8, "ratio": 0.7, "spearman": 0.951, "top10_overlap": 0.9}})
    'calibrated on 8 inputs: sum 0.70x exact, Spearman 0.95, top-10 overlap 90%'
    """
    cal = settings.get("calibration")
    if not cal:
        return ""
    return (f"calibrated on {cal['n_inputs']} inputs: sum {cal['ratio']:.2f}x exact, Spearman {cal['spearman']:.2f}, "
            f"top-10 overlap {cal['top10_overlap']:.0%}")
