"""One page of verdicts on the paper's four claims: ``python -m moelens.paper --models all``.

Runs :mod:`moelens.paper.claims` on each zoo model, adjusts every claim's p-values across models
(and domains, protocols, token sets) with Holm, computes each verdict from the numbers and writes
``docs/claims.md`` with nothing hand-written that the run could contradict (:mod:`.page`).

>>> from moelens.paper.claims import SMOKE
>>> verdict_of(["holds", "holds"]), verdict_of(["holds", "undecided"]), verdict_of(["does not hold"] * 2)
('holds', 'undecided', 'does not hold')
"""

from __future__ import annotations

import time
from typing import Any

from ..tasks.multiplicity import adjust_pvalues
from .claims import ALPHA, Sizes, domain_claim, driver_layer_claim, early_token_claim, halves, reweighting_claim

__all__ = ["ZOO", "run_claims", "verdict_of"]

ZOO = ("moelens/mixtral-tiny", "moelens/qwen2moe-tiny", "moelens/olmoe-deep")


def verdict_of(verdicts: list[str]) -> str:
    """A claim's verdict over several measurements: holds when every one holds, does not hold when
    every one does not, undecided otherwise (no measurement: undecided)."""
    if verdicts and all(v == "holds" for v in verdicts):
        return "holds"
    if verdicts and all(v == "does not hold" for v in verdicts):
        return "does not hold"
    return "undecided"


def _texts(sizes: Sizes) -> tuple[dict[str, list[str]], str]:
    from ..tasks.data import resolve_data_dir
    from ..tasks.demo import paper_domains

    source = "shared data (sst2/mmlu/gsm8k evaluation splits)" if resolve_data_dir() is not None else "packaged demo texts"
    return paper_domains(limit=sizes.texts_per_domain), source


def _one_model(name: str, sizes: Sizes, seed: int, texts: dict[str, list[str]], study: bool) -> dict[str, Any]:
    from .. import HookedMoE

    model = HookedMoE.from_pretrained(name)
    part_a, part_b = halves(texts)
    out: dict[str, Any] = {"model": name, "seconds": {}}
    start = time.perf_counter()
    out["domain"] = domain_claim(model, part_a, part_b, sizes, seed)
    out["seconds"]["domain"] = time.perf_counter() - start
    start = time.perf_counter()
    prompts, prompt_domains = [], []
    for domain, domain_texts in part_a.items():
        chosen = domain_texts[: sizes.driver_prompts_per_domain]
        prompts += chosen
        prompt_domains += [domain] * len(chosen)
    out["layers"], effects = driver_layer_claim(model, prompts, sizes, seed)
    out["seconds"]["layers"] = time.perf_counter() - start
    start = time.perf_counter()
    held = [t for domain_texts in part_b.values() for t in domain_texts]
    out["early"] = early_token_claim(model, effects, prompt_domains, held, sizes, seed)
    out["seconds"]["early"] = time.perf_counter() - start
    if study:
        start = time.perf_counter()
        out["reweighting"] = reweighting_claim(model, sizes, seed)
        out["seconds"]["reweighting"] = time.perf_counter() - start
    return out


def run_claims(models: list[str], sizes: Sizes, seed: int = 0) -> dict[str, Any]:
    """Measure every claim on every model, adjust p-values across the family of each claim, and
    set every verdict from the numbers."""
    from ..tasks.data import resolve_data_dir

    texts, source = _texts(sizes)
    study = resolve_data_dir() is not None  # the study needs labelled SST-2 train/validation
    runs = [_one_model(name, sizes, seed, texts, study) for name in models]
    _adjust([row for run in runs for row in run["domain"]])
    _adjust([run["layers"] for run in runs])
    _adjust([row for run in runs for row in run["early"]])
    for run in runs:
        for row in run["domain"]:
            row["verdict"] = ("holds" if row["p_adj"] < ALPHA else "does not hold" if row["held_out_lift"] < row["random_lo"]
                              else "undecided")
        layer = run["layers"]
        layer["verdict"] = ("holds" if layer["lo"] > 0 and layer["p_adj"] < ALPHA
                            else "does not hold" if layer["hi"] < 0 else "undecided")
        for row in run["early"]:
            row["verdict"] = ("holds" if row["verdict"] == "holds" and row["p_adj"] < ALPHA else row["verdict"]
                              if row["verdict"] != "holds" else "undecided")
        if "reweighting" in run:
            up = [r for r in run["reweighting"]["rows"] if r["factor"] == 1.2]
            gains = [r for r in up if r["beyond_random"] and r["vs_random"] > 0]
            run["reweighting"]["verdict"] = ("holds" if gains else "does not hold" if all(r["delta_hi"] < 0 for r in up)
                                             else "undecided")
    verdicts = {
        "domain": verdict_of([r["verdict"] for run in runs for r in run["domain"]]),
        "layers": verdict_of([run["layers"]["verdict"] for run in runs]),
        "early": verdict_of([r["verdict"] for run in runs for r in run["early"]]),
        "reweighting": verdict_of([run["reweighting"]["verdict"] for run in runs if "reweighting" in run]),
    }
    return {"runs": runs, "verdicts": verdicts, "sizes": sizes, "seed": seed, "source": source, "study": study}


def _adjust(rows: list[dict]) -> None:
    for row, p in zip(rows, adjust_pvalues([r["p"] for r in rows], "holm"), strict=True):
        row["p_adj"] = float(p)
