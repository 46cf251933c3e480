"""The result of a re-weighting study: a tidy table, a plot, a report section, save/load.

>>> table = pd.DataFrame([
...     {"expert_set": "baseline", "recipe": "none", "factor": float("nan"), "delta": 0.0, "delta_ci_low": 0.0, "delta_ci_high": 0.0},
...     {"expert_set": "domain", "recipe": "scale-logits", "factor": 1.2, "delta": 0.02, "delta_ci_low": -0.01, "delta_ci_high": 0.05}])
>>> StudyResult(table, {"model": "m", "task": "sst2"}).best()["expert_set"]
'domain'
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from moelens.lazy import pandas as pd

from ...results import Result, frame_from_json, frame_to_json, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["StudyResult", "factor_label", "study_section", "write_study"]

# Columns of the tidy table, in order.
COLUMNS = [
    "model", "task", "stage", "expert_set", "recipe", "factor", "n_experts", "draws", "n", "accuracy", "f1",
    "delta", "delta_ci_low", "delta_ci_high", "p_vs_baseline", "p_vs_baseline_adj", "p_vs_random", "p_vs_random_adj",
    "beyond_random", "neg_logit_share",
]


@dataclass(repr=False)
class StudyResult(Result):
    """``table``: one row per (expert set, recipe, factor) with accuracy, weighted F1, the paired
    delta vs the baseline with its 95% bootstrap CI, the McNemar p-value vs the baseline, the
    paired-bootstrap p-value vs the random experts of the same recipe and factor, and the share of
    the selected experts' router logits that are negative. ``meta``: how it was made; ``sets``:
    the selected (layer, expert) pairs; ``results``: the :class:`EvalResult` of every condition.
    ``save``/``load`` keep all four (``<path>.safetensors`` + ``<path>.json``).

    Example::

        study = moelens.reweighting_study(model, "sst2", select_on="train", evaluate_on="validation")
        study.table; study.plot("study.png"); study.save("study")   # study.safetensors + study.json
    """

    table: pd.DataFrame
    meta: dict[str, Any]
    sets: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)

    FORMAT, VERSION = "moelens.StudyResult", 1

    def to_frame(self) -> pd.DataFrame:
        return self.table.copy()

    def best(self) -> pd.Series:
        """The row with the largest delta (ties: first)."""
        return self.table.loc[self.table["delta"].idxmax()]

    @property
    def final_stage(self) -> str:
        """``"confirm"`` when the study had a confirmation split, else ``"develop"``."""
        stages = set(self.table["stage"]) if "stage" in self.table else {"develop"}
        return "confirm" if "confirm" in stages else "develop"

    def findings(self) -> pd.DataFrame:
        """The selected sets' rows of the final stage (:attr:`final_stage`) that are beyond random
        after the multiplicity correction: what the study may claim. Empty when nothing survives.

        >>> t = pd.DataFrame({"stage": ["confirm"] * 2, "expert_set": ["driver", "domain"], "beyond_random": [False, True]})
        >>> StudyResult(t, {}).findings()["expert_set"].tolist()
        ['domain']
        """
        table = self.table
        if "beyond_random" not in table:
            return table.iloc[0:0]
        final = table[(table.get("stage", "develop") == self.final_stage) & table["beyond_random"].astype(bool)]
        return final.reset_index(drop=True)

    def _final_rows(self) -> pd.DataFrame:
        """The rows the plot shows: those of the final stage (all rows of a study without stages)."""
        return self.table[self.table["stage"] == self.final_stage] if "stage" in self.table else self.table

    def _recipes(self) -> list[str]:
        return list(dict.fromkeys(r for r in self._final_rows()["recipe"] if r != "none"))

    def _figure(self) -> Figure:
        """Delta vs baseline with its 95% CI, one bar per expert set and factor, a panel per recipe
        (the final stage's rows: :attr:`final_stage`)."""
        recipes = self._recipes() or [None]
        fig = new_figure((4.2 * len(recipes), 3.6))
        for ax, recipe in zip(fig.subplots(1, len(recipes), squeeze=False)[0], recipes, strict=True):
            self._draw(ax, recipe)
        fig.suptitle(f"{self.meta.get('model', '')} on {self.meta.get('task', '')}", fontsize=10)
        return fig

    def _draw(self, ax, recipe: str | None = None) -> None:
        """One recipe's panel (default: the first recipe)."""
        recipe = recipe if recipe is not None else next(iter(self._recipes()), None)
        rows = self._final_rows()
        part = rows[rows["recipe"] == recipe].reset_index(drop=True)
        labels = [f"{s}\n{factor_label(f, recipe)}" for s, f in zip(part["expert_set"], part["factor"], strict=True)]
        colors = ["#bbbbbb" if s.startswith("random") else "#4c72b0" if s == "domain" else "#dd8452"
                  if s == "driver" else "#55a868" for s in part["expert_set"]]
        err = np.vstack([part["delta"] - part["delta_ci_low"], part["delta_ci_high"] - part["delta"]])
        ax.bar(range(len(part)), part["delta"] * 100, yerr=err * 100, color=colors, capsize=3)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(part)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_title(str(recipe), fontsize=9)
        ax.set_ylabel("accuracy change (points)")

    # -- persistence (Result.save / Result.load): the table, meta, sets and every condition's result --
    def _state(self) -> tuple[dict[str, Tensor], dict]:
        tensors, results = {}, []
        for i, (name, res) in enumerate(self.results.items()):
            inner, meta = res._state()
            tensors.update({f"results.{i}.{k}": v for k, v in inner.items()})
            results.append({"name": name, "meta": meta, "tensors": sorted(inner)})
        sets = {k: [list(map(int, pair)) for pair in v] for k, v in self.sets.items()}
        meta = {"table": frame_to_json(self.table), "meta": json.loads(json.dumps(self.meta, default=str)),
                "sets": sets, "results": results}
        return tensors, meta

    @classmethod
    def load(cls, path: str | Path) -> StudyResult:
        """Read what :meth:`save` (or :func:`write_study`) wrote: either file's path, the common stem,
        or the ``study.csv`` beside them."""
        path = Path(path)
        return super().load(path.with_suffix("") if path.suffix == ".csv" else path)

    @classmethod
    def _from_state(cls, tensors: dict[str, Tensor], meta: dict) -> StudyResult:
        from ..evaluate import EvalResult

        results = {}
        for i, item in enumerate(meta.get("results", [])):
            inner = {k: tensors[f"results.{i}.{k}"] for k in item["tensors"]}
            results[item["name"]] = EvalResult._from_state(inner, item["meta"])
        sets = {k: [tuple(pair) for pair in v] for k, v in meta["sets"].items()}
        return cls(frame_from_json(meta["table"]), meta["meta"], sets, results)

    def _html_table(self) -> pd.DataFrame:
        return self.table

    def __repr__(self) -> str:
        base = self.table[self.table["expert_set"] == "baseline"]
        acc = f"{float(base['accuracy'].iloc[0]):.3f}" if len(base) else "?"
        return (f"StudyResult({self.meta.get('model')} on {self.meta.get('task')}: baseline {acc}, "
                f"{len(self.table)} rows; .table, .plot())")


def factor_label(factor: float, recipe: str) -> str:
    """How a condition's factor reads in tables and findings: ``x0.8`` (a scale), ``push +1`` (a
    perturbation), empty for rows without one (baseline, LoRA).

    >>> factor_label(0.8, "scale-logits"), factor_label(1.0, "perturb"), factor_label(float("nan"), "none")
    ('x0.8', 'push +1', '')
    """
    if math.isnan(factor):  # baseline, LoRA
        return ""
    return f"push {factor:+g}" if recipe == "perturb" else f"x{factor:g}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "\u2013" if math.isnan(value) else f"{value:.3f}"  # "–": not defined for this row (see the note)
    return html.escape(str(value))


def study_section(result: StudyResult, figure: bool = True) -> str:
    """The study as an HTML report section (a note, the plot, the table), for ``moelens analyze --study``."""
    from ...report import figure_html

    meta = result.meta
    cols = [c for c in ["stage", "expert_set", "recipe", "factor", "accuracy", "f1", "delta", "delta_ci_low", "delta_ci_high",
            "p_vs_baseline", "p_vs_baseline_adj", "p_vs_random", "p_vs_random_adj", "beyond_random", "neg_logit_share"]
            if c in result.table]
    found = result.findings()
    survives = ("nothing is beyond random after correction" if found.empty else "beyond random after correction: " + "; ".join(
        f"{r.expert_set} {r.recipe} {factor_label(r.factor, r.recipe)} (delta {r.delta:+.3f}, adjusted p {r.p_vs_random_adj:.3f})"
        for r in found.itertuples()))
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(row[c])}</td>" for c in cols) + "</tr>" for _, row in result.table.iterrows())
    note = (
        f"<p class='note'>{html.escape(str(meta.get('model')))} on {html.escape(str(meta.get('task')))}: experts selected on "
        f"{meta.get('n_select')} examples ({html.escape(str(meta.get('select_on')))}), evaluated on {meta.get('n_eval')} others "
        f"({html.escape(str(meta.get('evaluate_on')))}); {meta.get('n_experts')} experts per set, {meta.get('n_random')} random "
        f"draws at matched layers. delta: paired difference vs the baseline, 95% bootstrap CI; p_vs_baseline: exact McNemar; "
        f"p_vs_random: paired bootstrap against the random draws of the same recipe and factor; neg_logit_share: share of the "
        f"set's router logits below 0 on the selection texts (scaling those by 1.2 lowers them). Stages: develop on "
        f"{html.escape(str(meta.get('evaluate_on')))}, confirm on {html.escape(str(meta.get('confirm_on') or 'none'))}; "
        f"p-values adjusted with {html.escape(str(meta.get('correction', 'none')))} within each stage across every set, recipe "
        f"and factor (_adj columns). <b>{html.escape(result.final_stage)} stage: {html.escape(survives)}.</b> \u2013: not defined for the "
        f"row (the baseline is compared with nothing; p_vs_random needs random draws of the same recipe).</p>"
    )
    plot = figure_html(result.plot(), "re-weighting study") if figure else ""
    return note + plot + f"<table><tr>{head}</tr>{body}</table>"


def write_study(out: str | Path, study: StudyResult) -> Path:
    """Save the study (``study.safetensors`` + ``study.json``, the table as ``study.csv``, ``study.png``)
    and its report section into ``out``; returns the CSV's path."""
    from ...report import write_section

    out = Path(out)
    study.save(out / "study")
    path = out / "study.csv"
    study.table.to_csv(path, index=False)  # the table alone, for spreadsheets
    study.plot(path=out / "study.png")
    write_section(out, "Re-weighting study", study_section(study))
    return path
