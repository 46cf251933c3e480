"""The evaluation stages of :func:`~moelens.tasks.study.reweighting_study` and its multiplicity
correction.

Three-way protocol: experts are *selected* on one split; every (set, recipe, factor) and its random
controls are compared on a *development* split (``evaluate_on``: where an analyst may look, iterate
and pick); the same conditions are re-run once on a *confirmation* split (``confirm_on``) that
nothing before looked at. Within each stage, p-values are adjusted over the whole family of
comparisons (:mod:`moelens.tasks.multiplicity`): ``p_vs_random_adj`` over every selected set x
recipe x factor, ``p_vs_baseline_adj`` over every non-baseline row. ``beyond_random`` is True only
where the adjusted p-value vs random is below ``alpha``; the study's findings are the confirmation
stage's ``beyond_random`` rows (the development stage's when there is no confirmation split).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from moelens.lazy import pandas as pd

from ..evaluate import evaluate
from ..multiplicity import adjust_pvalues
from ..scoring import mcnemar_p, paired_bootstrap

__all__ = ["apply_correction", "evaluate_stage", "stage_row"]


def stage_row(meta: dict, name: str, recipe: str, factor: float, n_experts: int, draws: int, correct: np.ndarray, f1: float,
              baseline: np.ndarray, random_correct: np.ndarray | None, neg_share: float, seed: int) -> dict:
    """One table row: accuracy, paired delta vs the baseline (bootstrap CI), p vs baseline
    (McNemar; bootstrap for averaged draws) and p vs the mean of the random draws (bootstrap)."""
    delta, (lo, hi), _ = paired_bootstrap(correct, baseline, seed=seed)
    p_random = float("nan") if random_correct is None else paired_bootstrap(correct, random_correct, seed=seed)[2]
    p_base = mcnemar_p(correct, baseline) if draws == 1 else paired_bootstrap(correct, baseline, seed=seed)[2]
    return {**meta, "expert_set": name, "recipe": recipe, "factor": factor, "n_experts": n_experts, "draws": draws,
            "n": len(correct), "accuracy": float(np.mean(correct)), "f1": f1, "delta": delta, "delta_ci_low": lo,
            "delta_ci_high": hi, "p_vs_baseline": p_base, "p_vs_random": p_random, "neg_logit_share": neg_share}


def evaluate_stage(
    model: Any, spec: Any, records: Sequence[dict], stage: str, sets: Mapping[str, list], randoms: Mapping[str, list],
    conditions: Sequence[tuple[str, float]], interventions: Any, neg: Mapping[str, float], meta: dict, seed: int,
    batch_size: int, push: float, run_eval: Any, tuned: Any = None,
) -> tuple[list[dict], dict[str, Any]]:
    """Baseline, every (set, recipe, factor) and its random draws on ``records``: rows and results.
    ``run_eval(fn)`` runs each evaluation ``fn()`` (or returns it from the study's checkpoint)."""
    meta = {**meta, "stage": stage}
    run = {"data": records, "batch_size": batch_size, "progress": False}
    base = run_eval(lambda: evaluate(model, spec, **run))
    tag = "" if stage == "develop" else f"{stage}|"  # develop keys as before the confirmation stage existed
    results: dict[str, Any] = {f"{tag}baseline": base}
    rows = [stage_row(meta, "baseline", "none", float("nan"), 0, 1, base.correct, base.f1, base.correct, None, float("nan"), seed)]
    for recipe, factor in conditions:
        shown = (push if factor > 1 else -push) if recipe == "perturb" else factor  # perturb: the signed push
        for set_name, chosen in sets.items():
            draws = []
            for d, draw in enumerate(randoms[set_name]):
                edits = interventions(draw, recipe, factor, push)
                res = run_eval(lambda edits=edits: evaluate(model, spec, interventions=edits, **run))
                results[f"{tag}random ({set_name})#{d}|{recipe}|{factor}"] = res
                draws.append(res)
            edits = interventions(chosen, recipe, factor, push)
            res = run_eval(lambda edits=edits: evaluate(model, spec, interventions=edits, **run))
            results[f"{tag}{set_name}|{recipe}|{factor}"] = res
            random_mean = np.mean([r.correct for r in draws], axis=0) if draws else None
            rows.append(stage_row(meta, set_name, recipe, shown, len(chosen), 1, res.correct, res.f1, base.correct, random_mean,
                                  neg[set_name], seed))
            if draws:
                neg_random = float(np.mean([neg[f"random ({set_name})#{d}"] for d in range(len(draws))]))
                rows.append(stage_row(meta, f"random ({set_name})", recipe, shown, len(chosen), len(draws), random_mean,
                                      float(np.mean([r.f1 for r in draws])), base.correct, None, neg_random, seed))
    if tuned is not None:
        res = run_eval(lambda: evaluate(tuned, spec, **run))
        results[f"{tag}tune the router"] = res
        rows.append(stage_row(meta, "tune the router", "lora", float("nan"), 0, 1, res.correct, res.f1, base.correct, None,
                              float("nan"), seed))
    return rows, results


def apply_correction(table: pd.DataFrame, selected: Sequence[str], correction: str, alpha: float) -> pd.DataFrame:
    """Add ``p_vs_baseline_adj``, ``p_vs_random_adj`` and ``beyond_random`` to ``table``, each
    family taken within one stage (``selected``: the names of the selected expert sets).

    >>> t = pd.DataFrame({"stage": ["develop"] * 3, "expert_set": ["baseline", "driver", "domain"],
    ...                   "p_vs_baseline": [np.nan, 0.01, 0.04], "p_vs_random": [np.nan, 0.01, 0.04]})
    >>> apply_correction(t, ["driver", "domain"], "holm", 0.05)[["p_vs_random_adj", "beyond_random"]].values.tolist()
    [[nan, False], [0.02, True], [0.04, True]]
    """
    table = table.copy()
    table["p_vs_baseline_adj"] = np.nan
    table["p_vs_random_adj"] = np.nan
    for _stage, part in table.groupby("stage", sort=False):
        others = part.index[part["expert_set"] != "baseline"]
        table.loc[others, "p_vs_baseline_adj"] = adjust_pvalues(table.loc[others, "p_vs_baseline"], correction)
        chosen = part.index[part["expert_set"].isin(list(selected))]
        table.loc[chosen, "p_vs_random_adj"] = adjust_pvalues(table.loc[chosen, "p_vs_random"], correction)
    table["beyond_random"] = table["p_vs_random_adj"].lt(alpha)
    return table
