"""``docs/study.md`` from a saved three-way study: every number and every statement of what
survives comes from the run (``python -m moelens.tasks.study.page STUDY.csv --command ...``)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from .result import StudyResult, factor_label

__all__ = ["study_markdown"]

_COLS = ["expert_set", "recipe", "factor", "accuracy", "delta", "delta_ci_low", "delta_ci_high", "p_vs_baseline",
         "p_vs_baseline_adj", "p_vs_random", "p_vs_random_adj", "beyond_random"]


def _cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def _stage_table(table: pd.DataFrame, stage: str) -> list[str]:
    part = table[table["stage"] == stage]
    lines = ["| " + " | ".join(_COLS) + " |", "|" + "---|" * len(_COLS)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in _COLS) + " |" for _, row in part.iterrows()]
    return lines


def study_markdown(study: StudyResult, command: str) -> str:
    """The page for one study (markdown).

    >>> t = pd.DataFrame([{"stage": "develop", **{c: float("nan") for c in _COLS}, "expert_set": "baseline", "recipe": "none",
    ...                    "beyond_random": False}])
    >>> study_markdown(StudyResult(t, {"model": "m", "task": "sst2"}), "cmd").splitlines()[0]
    '# The re-weighting study: m on sst2'
    """
    meta, table = study.meta, study.table
    found = study.findings()
    final = study.final_stage
    chosen = table[(table["stage"] == final) & table["expert_set"].isin(["domain", "driver"])]
    out = [
        f"# The re-weighting study: {meta.get('model')} on {meta.get('task')}",
        "",
        "Generated from one run by `python -m moelens.tasks.study.page`; every number below is that run's. Command:",
        "",
        "```bash", command, "```", "",
        "## Protocol", "",
        f"- **Selection** of the expert sets on {meta.get('n_select')} prompts of `{meta.get('select_on')}`: domain experts by "
        f"CWAS lift, driver experts by the {meta.get('driver_method')} driver sweep; {meta.get('n_experts')} (layer, expert) "
        f"pairs each; {meta.get('n_random')} random draws at the same layers per set.",
        f"- **Development** on {meta.get('n_eval')} rows of `{meta.get('evaluate_on')}`.",
        f"- **Confirmation** on {meta.get('n_confirm')} rows of `{meta.get('confirm_on')}`, disjoint from both by id and text "
        "(the study checks it), evaluated once with the same conditions.",
        f"- Recipes {meta.get('recipes')}, factors {meta.get('factors')}, push {meta.get('push')}; router LoRA steps "
        f"{meta.get('tune_steps')}; seed {meta.get('seed')}.",
        f"- **Multiplicity**: p-values adjusted with `{meta.get('correction')}` within each stage, over every selected set x "
        "recipe x factor (p vs random) and every non-baseline row (p vs baseline). A set is *beyond random* only when its "
        f"adjusted p vs random is below {meta.get('alpha')}.",
        "",
        "## What survives", "",
    ]
    if found.empty:
        out.append(f"Nothing: none of the {len(chosen)} selected-set rows of the {final} stage is beyond random after "
                   "correction.")
    else:
        out += [f"- {r.expert_set} experts, {r.recipe} {factor_label(r.factor, r.recipe)}: {'lowers' if r.delta < 0 else 'raises'} "
                f"accuracy by {abs(r.delta) * 100:.1f} points vs baseline [{r.delta_ci_low * 100:+.1f}, {r.delta_ci_high * 100:+.1f}], "
                f"adjusted p vs random {r.p_vs_random_adj:.3f}" for r in found.itertuples()]
    develop = table[(table["stage"] == "develop") & table["beyond_random"].astype(bool)]
    out += ["", f"Development stage: {len(develop)} row(s) beyond random after correction "
            + ("(" + "; ".join(f"{r.expert_set} {r.recipe} {factor_label(r.factor, r.recipe)}, {r.delta * 100:+.1f} points"
                             for r in develop.itertuples()) + ")" if len(develop) else "")
            + ". Only the confirmation stage counts as a finding.", ""]
    for stage in ("confirm", "develop"):
        if (table["stage"] == stage).any():
            out += [f"## {stage.capitalize()} stage", ""] + _stage_table(table, stage) + [""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="study.csv written by `moelens study` (with study.json and study.safetensors beside it)")
    parser.add_argument("--command", required=True, help="the command that produced it, quoted on the page")
    parser.add_argument("--out", type=Path, default=Path("docs/study.md"))
    args = parser.parse_args(argv)
    args.out.write_text(study_markdown(StudyResult.load(args.study), args.command), encoding="utf-8")
    return args.out


if __name__ == "__main__":
    main()
