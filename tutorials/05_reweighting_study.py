# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 5. Re-weighting experts: does up-weighting domain or driver experts raise accuracy?
#
# The paper (arXiv 2601.10159) scales the router logits of a task's domain experts, or of its
# driver experts, by 1.2 (and by 0.8 as the opposite test) and reports accuracy gains on sentiment,
# MMLU and math (+2.08% on average for domain experts, +3.00% for driver experts); tuning the
# routers with LoRA helps some models and hurts others. `moelens.reweighting_study` runs that
# experiment with the controls that make a gain believable:
#
# - experts are **selected on one split** (SST-2 train) and **evaluated on another** (SST-2
#   validation); the study refuses splits that share an id or a text;
# - every selected set has **random controls**: the same number of experts in the same layers,
#   several draws;
# - every delta has a **paired** CI (bootstrap on the same examples), an exact McNemar p-value vs
#   the baseline, and a paired p-value vs the random experts;
# - three **recipes**: the paper's `Scale(on="logits")` (a negative logit times 1.2 goes *down*:
#   the table reports the share of negative logits of each set), `Scale(on="weights")`, and an
#   additive push `Perturb(sign=+1)` (`sign=-1` for "down").
#
# First, where the zoo models stand on each task: re-weighting can only move a task the model does
# above chance.

# %%
# %matplotlib inline
import os
import warnings
from pathlib import Path

import pandas as pd
import torch

try:  # Jupyter (and the docs build) shows figures inline; as a script they go to files only
    display  # noqa: B018
except NameError:
    def display(*objects):  # noqa: D103
        return None

import moelens
from moelens import HookedMoE
from moelens.tasks.data import resolve_data_dir
from moelens.tasks.demo import demo_sentiment_records

torch.set_num_threads(1)
small = os.environ.get("MOELENS_TUTORIAL_SMALL") == "1"
out = Path(os.environ.get("MOELENS_TUTORIAL_OUT", "tutorials/_out")) / "05_reweighting_study"
out.mkdir(parents=True, exist_ok=True)
pd.set_option("display.width", 200)
names = ("moelens/mixtral-tiny", "moelens/qwen2moe-tiny")
models = {name: HookedMoE.from_pretrained(name, dtype=torch.float32) for name in names}

source = resolve_data_dir()
# Without the evaluation sets: the 40 labelled demo reviews that ship with moelens (16 select, 24
# evaluate) and generated arithmetic; MMLU and GSM8K are left out.
demo_reviews = None if source else demo_sentiment_records()
print("data:", f"evaluation sets (sst2, mmlu, gsm8k) from {source}" if source else
      "the packaged demo texts (no ../shared/data found): 40 demo reviews and generated arithmetic; far too few "
      "examples for the study to show anything but its mechanics")

chance = {"sst2": 0.5, "mmlu": 0.25, "arithmetic": 0.0, "gsm8k": 0.0}
limits = {"sst2": 48 if small else None, "mmlu": 48 if small else 1000, "arithmetic": 24 if small else 300, "gsm8k": 4 if small else 200}
if not source:
    limits = {"sst2": None, "arithmetic": limits["arithmetic"]}
rows = []
for name, model in models.items():
    for task, limit in limits.items():
        res = moelens.evaluate(model, task, data=demo_reviews if task == "sst2" else None, limit=limit, progress=False)
        lo, hi = res.ci
        rows.append({"model": name, "task": task, "n": res.n, "accuracy": res.accuracy, "ci_low": lo, "ci_high": hi,
                     "chance": chance[task], "above_chance": lo > chance[task]})
baselines = pd.DataFrame(rows)
print(baselines.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
for row in baselines.itertuples():
    verdict = "above chance" if row.above_chance else "NOT above chance (the 95% CI reaches chance)"
    print(f"{row.model} on {row.task}: {row.accuracy:.3f} [{row.ci_low:.3f}, {row.ci_high:.3f}], chance {row.chance:.2f}: {verdict}")

# %% [markdown]
# ## The study on sentiment (SST-2)
#
# Protocol, fixed before looking at the evaluation split: 4 experts per set (out of 4 x 8 = 32
# (layer, expert) pairs), domain experts by CWAS lift of sentiment over MMLU and GSM8K prompts,
# driver experts by the exact driver sweep, both on 256 SST-2 training prompts; 3 random draws;
# factors 0.8 and 1.2; push 1.0; a router LoRA (rank 4, 100 steps on SST-2 train). Three disjoint
# splits: select on SST-2 train, develop on the first half of validation, confirm on the second half
# (looked at once); p-values vs random are Holm-adjusted across every set x recipe x factor within
# each stage, and only the confirmation stage's adjusted results count. The docs build
# runs a smaller version (`MOELENS_TUTORIAL_SMALL=1`); the full tables are on the
# [study page](../study.md).

# %%
if source:  # select on train, develop on one half of validation, confirm on the other (looked at once)
    splits = {"select_on": "train", "evaluate_on": "validation[:50]" if small else "validation[:436]",
              "confirm_on": "validation[50:100]" if small else "validation[436:]"}
else:  # the 40 packaged demo reviews, in three disjoint parts
    splits = {"select_on": demo_reviews[:14], "evaluate_on": demo_reviews[14:27], "confirm_on": demo_reviews[27:]}
studies = {}
for name, model in models.items():
    # The study's caveats (too few experts for distinct random draws; without the data, no MMLU/GSM8K
    # contrast for the domain experts) are printed as notes rather than shown as warnings.
    with warnings.catch_warnings(record=True) as caveats:
        warnings.simplefilter("always")
        study = moelens.reweighting_study(
            model, "sst2", **splits, correction="holm", n_experts=4, n_random=2 if small else 3,
            recipes=("scale-logits", "scale-weights", "perturb"), select_limit=32 if small else 256,
            driver_method="first_order" if small else "exact", tune_steps=10 if small else 100, progress=False, model_name=name,
        )
    for caveat in dict.fromkeys(str(w.message) for w in caveats):
        print("note:", caveat)
    studies[name] = study
    print(name)
    print(study.table.drop(columns=["model", "task"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    display(study.plot(out / f"{name.split('/')[-1]}-study.png"))

# %% [markdown]
# ## What the run shows
#
# The sentences below are computed from the tables above.

# %%
def sentence(table: pd.DataFrame, expert_set: str, recipe: str, factor: float) -> str:
    table = table[table["stage"] == "confirm"]  # the split nothing was chosen on
    row = table[(table["expert_set"] == expert_set) & (table["recipe"] == recipe) & (table["factor"] == factor)].iloc[0]
    rand = table[(table["expert_set"] == f"random ({expert_set})") & (table["recipe"] == recipe) & (table["factor"] == factor)].iloc[0]
    return (f"{expert_set} experts, {recipe} {factor:g}: {row['delta'] * 100:+.1f} points "
            f"[{row['delta_ci_low'] * 100:+.1f}, {row['delta_ci_high'] * 100:+.1f}] (McNemar p {row['p_vs_baseline']:.2f}); "
            f"random experts at the same layers {rand['delta'] * 100:+.1f}; p vs random {row['p_vs_random']:.2f}, "
            f"Holm-adjusted {row['p_vs_random_adj']:.2f}; {row['neg_logit_share']:.0%} of the set's logits are negative")


for name, study in studies.items():
    table = study.table
    base = table[(table["expert_set"] == "baseline") & (table["stage"] == "confirm")].iloc[0]
    print(f"\n{name}: baseline accuracy {base['accuracy']:.3f} on {int(base['n'])} "
          f"{'SST-2 validation reviews (confirmation half)' if source else 'demo reviews (confirmation third)'}")
    for expert_set in ("domain", "driver"):
        for recipe, factor in (("scale-logits", 1.2), ("scale-logits", 0.8), ("perturb", 1.0)):
            print("  " + sentence(table, expert_set, recipe, factor))
    chosen = table[(table["stage"] == "confirm") & table["expert_set"].isin(["domain", "driver"])]
    found = study.findings()
    print(f"  confirmation rows beyond random after Holm correction: {len(found)} of {len(chosen)}"
          + "".join(f"\n    {r.expert_set} {r.recipe} {r.factor:g}: {r.delta * 100:+.1f} points, adjusted p {r.p_vs_random_adj:.3f}"
                    for r in found.itertuples()))
    lora = table[(table["expert_set"] == "tune the router") & (table["stage"] == "confirm")]
    if len(lora):
        row = lora.iloc[0]
        print(f"  tune the router (LoRA): {row['accuracy']:.3f}, {row['delta'] * 100:+.1f} points "
              f"[{row['delta_ci_low'] * 100:+.1f}, {row['delta_ci_high'] * 100:+.1f}]")
