"""The paper's four claims, measured on one model: each returns rows of numbers and a verdict
computed from them (``"holds"``, ``"does not hold"``, ``"undecided"``); nothing is hand-written.

1. **Domain experts**: experts selected by CWAS lift on half A of a domain's texts keep a high
   lift on the held-out half B, against random sets of as many experts (permutation p-value).
2. **Drivers in middle layers**: the exact driver effect's middle-layer share minus the share a
   flat profile gives at this depth, bootstrap CI over inputs.
3. **Early tokens trigger drivers**: :meth:`~moelens.analysis.triggers.TokenTriggers.early_vs_late`
   against frequency-matched controls, on held-out texts, under two driver-selection protocols
   and three token sets (:func:`~moelens.analysis.triggers.sensitivity.early_late_sensitivity`).
4. **Re-weighting gains**: :func:`~moelens.reweighting_study` with selection / development /
   confirmation splits and Holm correction; only the confirmation stage counts.

Verdict rules (also printed on the page): a measurement *holds* when its adjusted p-value is below
0.05 and its interval excludes the null in the claimed direction; *does not hold* when its interval
lies entirely on the other side of the null; *undecided* otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..stats import bootstrap_counts, bootstrap_p, percentile_ci

__all__ = ["Sizes", "domain_claim", "driver_layer_claim", "early_token_claim", "reweighting_claim"]

ALPHA = 0.05


@dataclass(frozen=True)
class Sizes:
    """How much data each claim uses (``--smoke`` shrinks everything)."""

    texts_per_domain: int = 48  # split into halves A (selection) and B (held out)
    driver_prompts_per_domain: int = 8  # from half A
    n_top: int = 4
    n_boot: int = 1000
    n_perm: int = 5000
    study_select: int = 48
    study_eval: int = 200  # development and confirmation, each
    study_random: int = 2


SMOKE = Sizes(texts_per_domain=6, driver_prompts_per_domain=2, n_top=2, n_boot=100, n_perm=200, study_select=6,
              study_eval=6, study_random=1)


def halves(texts: dict[str, list[str]]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Even-indexed texts (selection) and odd-indexed ones (held out), per domain.

    >>> halves({"a": ["0", "1", "2"]})
    ({'a': ['0', '2']}, {'a': ['1']})
    """
    return {d: t[0::2] for d, t in texts.items()}, {d: t[1::2] for d, t in texts.items()}


def domain_claim(model: Any, part_a: dict[str, list[str]], part_b: dict[str, list[str]], sizes: Sizes, seed: int) -> list[dict]:
    """Per domain: held-out mean CWAS lift of the top ``n_top`` experts chosen on half A, the
    random sets' mean and 95% range, and the one-sided permutation p-value."""
    from ..analysis import collect_routing_stats

    stats_a = collect_routing_stats(model, part_a, progress=False)
    stats_b = collect_routing_stats(model, part_b, progress=False)
    lift_b = stats_b.cwas_lift().double()  # [domain moe_layer expert]
    layers = list(stats_b.moe_layers)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for d, domain in enumerate(stats_b.domains):
        top = stats_a.domain_experts(domain, top=sizes.n_top)
        flat = torch.tensor([layers.index(int(r.layer)) * lift_b.shape[2] + int(r.expert) for r in top.itertuples()])
        values = lift_b[d].reshape(-1)
        observed = float(values[flat].mean())
        pool = torch.ones(len(values), dtype=torch.bool)
        pool[flat] = False
        candidates = pool.nonzero().flatten()
        draws = torch.stack([candidates[torch.randperm(len(candidates), generator=gen)[: len(flat)]] for _ in range(sizes.n_perm)])
        null = values[draws].mean(1)  # [n_perm]
        p = float((1 + (null >= observed).sum()) / (1 + len(null)))
        held_top = stats_b.domain_experts(domain, top=sizes.n_top)
        reappear = len({(int(r.layer), int(r.expert)) for r in held_top.itertuples()}
                       & {(int(r.layer), int(r.expert)) for r in top.itertuples()})
        lo, hi = (float(x) for x in torch.quantile(null, torch.tensor([0.025, 0.975], dtype=torch.float64)))
        rows.append({"domain": domain, "held_out_lift": observed, "random_mean": float(null.mean()), "random_lo": lo,
                     "random_hi": hi, "reappear": f"{reappear}/{len(flat)}", "p": p})
    return rows


def driver_layer_claim(model: Any, prompts: list[str], sizes: Sizes, seed: int) -> tuple[dict, Any]:
    """Middle-layer share of the exact driver effect minus the flat-profile share, with a bootstrap
    CI and two-sided p over inputs; also returns the :class:`DriverEffects` (per input)."""
    from ..analysis import driver_effects

    effects = driver_effects(model, prompts, method="exact", per_input=True, progress=False)
    per = effects.per_input.sum(-1)  # [input moe_layer]
    n = per.shape[1]
    lo_l, hi_l = n // 3, n - n // 3
    counts = torch.cat([torch.ones(1, per.shape[0], dtype=torch.float64), bootstrap_counts(per.shape[0], sizes.n_boot, seed)])
    totals = counts @ per  # [1+boot moe_layer]
    share = totals[:, lo_l:hi_l].sum(1) / totals.sum(1)
    uniform = effects.middle_share_uniform()
    excess = share - uniform
    lo, hi = percentile_ci(excess[1:])
    p = bootstrap_p(excess[1:])
    layer_share = (totals[0] / totals[0].sum()).tolist()
    row = {"middle_share": float(share[0]), "uniform_share": uniform, "excess": float(excess[0]), "lo": lo, "hi": hi, "p": p,
           "n_layers": n, "middle_layers": f"{effects.moe_layers[lo_l]}..{effects.moe_layers[hi_l - 1]}",
           "top_layer": int(effects.moe_layers[int(np.argmax(layer_share))]), "top_layer_share": max(layer_share),
           "n_inputs": per.shape[0]}
    return row, effects


def early_token_claim(model: Any, effects: Any, domains_of_prompts: list[str], held_out: list[str], sizes: Sizes,
                      seed: int) -> list[dict]:
    """Early-vs-late against matched controls on held-out texts, for drivers chosen on all prompts
    ("mixed domains") and on the sentiment prompts alone, under three token sets."""
    from ..analysis.drivers import DriverEffects
    from ..analysis.triggers.sensitivity import early_late_sensitivity

    protocols = {"mixed domains": effects.top(10)}
    rows = [i for i, d in enumerate(domains_of_prompts) if d == "sentiment"]
    if rows and effects.per_input is not None:
        alone = DriverEffects(effects.per_input[rows].mean(0), effects.moe_layers, effects.n_experts, "exact")
        protocols["sentiment only"] = alone.top(10)
    template: list[int] = []
    if model.tokenizer is not None:
        for word in ("Review:", "Sentiment:", "Question:", "Answer:", "\n"):
            template += list(model.tokenizer(word, add_special_tokens=False)["input_ids"])
    frame = early_late_sensitivity(model, held_out, protocols, template_ids=template, n_boot=sizes.n_boot, seed=seed)
    out = frame.to_dict("records")
    for record in out:
        record["p"] = record["matched_p"]
    return out


def reweighting_claim(model: Any, sizes: Sizes, seed: int) -> dict:
    """The study on SST-2 with three disjoint splits and Holm correction; rows of the confirmation
    stage for the selected sets, and the verdict on "x1.2 on domain/driver experts raises accuracy"."""
    from ..tasks import reweighting_study

    n = sizes.study_eval
    study = reweighting_study(
        model, "sst2", select_on="train", evaluate_on=f"validation[:{n}]", confirm_on=f"validation[{n}:{2 * n}]",
        factors=(0.8, 1.2), n_experts=sizes.n_top, n_random=sizes.study_random, select_limit=sizes.study_select,
        driver_method="exact", seed=seed, progress=False,
    )
    table = study.table
    confirm = table[(table["stage"] == "confirm") & table["expert_set"].isin(["domain", "driver"])]
    randoms = table[(table["stage"] == "confirm") & table["expert_set"].str.startswith("random")]
    rows = []
    for r in confirm.itertuples():
        rand = randoms[(randoms["expert_set"] == f"random ({r.expert_set})") & (randoms["factor"] == r.factor)]
        vs_random = r.accuracy - float(rand["accuracy"].iloc[0]) if len(rand) else float("nan")
        rows.append({"set": r.expert_set, "factor": r.factor, "accuracy": r.accuracy, "delta": r.delta,
                     "delta_lo": r.delta_ci_low, "delta_hi": r.delta_ci_high, "vs_random": vs_random,
                     "p_vs_random": r.p_vs_random, "p_adj": r.p_vs_random_adj, "beyond_random": bool(r.beyond_random)})
    base = table[(table["stage"] == "confirm") & (table["expert_set"] == "baseline")]
    return {"rows": rows, "baseline": float(base["accuracy"].iloc[0]), "n_confirm": int(base["n"].iloc[0]),
            "n_develop": int(study.meta["n_eval"]), "n_select": int(study.meta["n_select"])}
