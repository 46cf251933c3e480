"""The re-weighting study (arXiv 2601.10159, section on up-/down-weighting experts), with controls.

Protocol of :func:`reweighting_study`:

1. Records of the selection split and of the evaluation split must not overlap, by id and by
   text (lower-cased, whitespace collapsed): otherwise :class:`~moelens.InvalidInputError`.
2. On the selection prompts only: domain experts (CWAS lift from
   :func:`~moelens.collect_routing_stats`, contrasting the task's domain with the other paper
   domains' non-evaluation splits) and driver experts (:func:`~moelens.driver_effects`); the
   ``n_experts`` best (layer, expert) pairs of each.
3. Random controls: for each selected set, ``n_random`` draws with the same number of experts in
   each of the same layers, drawn from that layer's other experts.
4. On the evaluation split: the baseline and, for every set, recipe and factor, the task's accuracy
   with the intervention; paired statistics on the same examples (bootstrap CI of the delta,
   exact McNemar vs the baseline, paired bootstrap vs the mean of the random draws).

Recipes: ``"scale-logits"`` (the paper's: ``Scale(factor, on="logits")``; a negative logit
scaled by 1.2 goes *down*, so the table reports the share of negative logits of each set),
``"scale-weights"`` (``Scale(on="weights")``: the applied weight, always positive), and
``"perturb"`` (an additive push of the router logit, ``Perturb(sign=+1)`` for factors above 1,
``sign=-1`` below, magnitude ``push``).

>>> expert_interventions([(1, 2)], "perturb", 1.2)
[Perturb(layers=1, experts=(2,), magnitude=1.0, sign=1, positions=None)]
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from moelens.lazy import pandas as pd

from ..._checks import check_count, check_factors, check_number
from ...errors import InvalidInputError
from ...interventions import Perturb, Scale
from ..evaluate import split_or_records as _records
from ..multiplicity import CORRECTIONS
from ..prompts import format_prompt, prompt_kind
from ..records import check_disjoint
from ..registry import get_task
from .checkpoint import StudyEvaluations, records_digest
from .protocol import apply_correction, evaluate_stage
from .recipes import RECIPES
from .result import COLUMNS, StudyResult

__all__ = ["check_disjoint", "expert_interventions", "matched_random_sets", "reweighting_study"]

# Contrast domains for domain-expert selection: the other paper domains, from splits no task evaluates on.
_CONTRAST = {"sentiment": ("sst2", "train"), "mmlu": ("mmlu", "validation"), "math": ("gsm8k", "train")}


def expert_interventions(experts: Sequence[tuple[int, int]], recipe: str, factor: float, push: float = 1.0) -> list:
    """One intervention per layer of ``experts`` for a recipe (see the module docstring).

    >>> expert_interventions([(0, 3), (0, 5), (2, 1)], "scale-logits", 1.2)
    [Scale(layers=0, experts=(3, 5), factor=1.2, on='logits', positions=None), Scale(layers=2, experts=(1,), factor=1.2, on='logits', positions=None)]
    """
    if recipe not in RECIPES:
        raise InvalidInputError(f"recipe {recipe!r} is not one of {RECIPES}.")
    by_layer: dict[int, list[int]] = {}
    for layer, expert in experts:
        by_layer.setdefault(int(layer), []).append(int(expert))
    out = []
    for layer, chosen in sorted(by_layer.items()):
        if recipe == "perturb":
            out.append(Perturb(layer, tuple(chosen), magnitude=push, sign=1 if factor > 1 else -1))
        else:
            out.append(Scale(layer, tuple(chosen), factor=float(factor), on=recipe.split("-")[1]))
    return out


def matched_random_sets(experts: Sequence[tuple[int, int]], n_experts: int, draws: int, seed: int = 0) -> list[list[tuple[int, int]]]:
    """``draws`` random sets with as many experts per layer as ``experts``, none of them in ``experts``.

    >>> matched_random_sets([(0, 1), (0, 2), (3, 0)], 4, 1, seed=0)[0]
    [(0, 0), (0, 3), (3, 1)]
    """
    rng = random.Random(seed)
    by_layer: dict[int, set[int]] = {}
    for layer, expert in experts:
        by_layer.setdefault(int(layer), set()).add(int(expert))
    out = []
    for _ in range(draws):
        drawn = []
        for layer, chosen in sorted(by_layer.items()):
            pool = [e for e in range(n_experts) if e not in chosen]
            if len(pool) < len(chosen):
                raise InvalidInputError(f"layer {layer} has {n_experts} experts; cannot draw {len(chosen)} others than {sorted(chosen)}.")
            drawn += [(layer, e) for e in sorted(rng.sample(pool, len(chosen)))]
        out.append(drawn)
    return out


def _contrast(domain: str, limit: int, data_dir) -> dict[str, list[str]]:
    """The other domains' texts that CWAS lift contrasts against: their real evaluation sets, or, where
    those are not found (a machine without the data), the demo texts that ship with moelens, said once."""
    from ..data import load_records
    from ..demo import demo_texts

    texts, missing = {}, []
    for other, (name, split) in _CONTRAST.items():
        if other == domain:
            continue
        try:
            texts[other] = [format_prompt(r) for r in load_records(name, split, limit=limit, data_dir=data_dir)]
        except (FileNotFoundError, ImportError, ValueError):
            texts[other] = demo_texts(limit).get(other, [])
            missing.append(f"{name} {split}")
    if missing:
        warnings.warn(f"no local {' or '.join(missing)} data (data_dir=, MOELENS_DATA_DIR or ../shared/data): domain experts are "
                      f"contrasted with the packaged demo texts of {', '.join(o for o in texts if o != domain)} instead.", stacklevel=3)
    return {other: t for other, t in texts.items() if t}


def _negative_share(model, prompts: Sequence[str], sets: Mapping[str, list[tuple[int, int]]], batch_size: int) -> dict[str, float]:
    """Share of each set's router logits below zero over the real tokens of ``prompts``."""
    negative = {name: 0 for name in sets}
    total = {name: 0 for name in sets}
    layer_index = {layer: i for i, layer in enumerate(model.cfg.moe_layers)}
    for start in range(0, len(prompts), batch_size):
        with torch.no_grad():
            _, cache = model.run_with_cache(list(prompts[start : start + batch_size]), names_filter=lambda n: n.endswith("hook_router_logits"))
        logits, mask = cache.router_logits(), cache.attention_mask  # [moe_layer batch pos n_experts], [batch pos]
        for name, experts in sets.items():
            for layer, expert in experts:
                values = logits[layer_index[layer], :, :, expert][mask]
                negative[name] += int((values < 0).sum())
                total[name] += values.numel()
    return {name: negative[name] / max(1, total[name]) for name in sets}


def _model_name(model: Any) -> str:
    """The zoo name for packaged models, else the HF ``name_or_path``, else the architecture."""
    from ...zoo import ZOO_DIR, ZOO_PREFIX

    path = str(getattr(getattr(model, "hf_model", None), "name_or_path", "") or "")
    if path and Path(path).parent == ZOO_DIR:
        return ZOO_PREFIX + Path(path).name
    return path or model.cfg.architecture


def _check_backend(model: Any, driver_method: str, tune_steps: int) -> None:
    """Refuse, before any work, what needs backward passes on a forward-only backend (``NNsightMoE``
    sets ``runs_backward = False``; :class:`~moelens.HookedMoE` runs both)."""
    if getattr(model, "runs_backward", True):
        return
    if driver_method != "exact":
        raise InvalidInputError(f"driver_method={driver_method!r} needs backward passes, which {type(model).__name__} does not run; "
                                "use driver_method='exact' (batched forwards), or a HookedMoE.")
    if tune_steps > 0:
        raise InvalidInputError(f"tune_steps={tune_steps} trains a router LoRA, which {type(model).__name__} cannot do; use "
                                "tune_steps=0, or run the study on HookedMoE.from_hf(model.hf_model, model.tokenizer) locally.")


def _check_study_settings(n_random, factors, n_experts, tune_steps, tune_rank, batch_size, push, select_limit, limit, seed) -> tuple:
    """Every setting of the study, checked before any data or model work (a study runs for minutes)."""
    check_count("n_random", n_random, 0, fix="random control draws per expert set; 0 for none")
    check_count("n_experts", n_experts, 1)
    check_count("tune_steps", tune_steps, 0, fix="router LoRA steps; 0 for none")
    check_count("tune_rank", tune_rank, 1)
    check_count("batch_size", batch_size, 1)
    check_count("select_limit", select_limit, 1, optional=True)
    check_count("limit", limit, 1, optional=True)
    check_count("seed", seed, 0)
    check_number("push", push, 0.0)
    return check_factors(factors)


def reweighting_study(
    model: Any,
    task: str,
    select_on: Any = None,
    evaluate_on: Any = None,
    factors: Sequence[float] = (0.8, 1.2),
    on: str = "logits",
    n_experts: int = 4,
    n_random: int = 3,
    *,
    confirm_on: Any = None,
    correction: str = "holm",
    alpha: float = 0.05,
    recipes: Sequence[str] | None = None,
    push: float = 1.0,
    select_limit: int | None = 256,
    limit: int | None = None,
    driver_method: str = "exact",
    tune_steps: int = 0,
    tune_rank: int = 4,
    batch_size: int = 32,
    seed: int = 0,
    model_name: str | None = None,
    data_dir: str | Path | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = True,
) -> StudyResult:
    """Does up-/down-weighting the domain or driver experts of a task change its accuracy more than
    re-weighting random experts at the same layers? (protocol in the module docstring)

    ``select_on`` / ``evaluate_on``: what :func:`~moelens.evaluate`'s ``data`` takes (a JSONL path,
    a folder, a list of records) or a split name of the task (``"train"``, ``"validation[:200]"``);
    by default the task's selection and evaluation splits. ``select_limit`` / ``limit`` thin them
    (evenly spaced). ``recipes``: any of ``"scale-logits"``, ``"scale-weights"``, ``"perturb"``
    (default: ``f"scale-{on}"``). ``tune_steps > 0`` adds the row "tune the router" (LoRA on the
    routers trained on the selection split, :func:`~moelens.tune_router`). Returns a
    :class:`StudyResult` (``.table``, ``.plot()``).

    ``confirm_on``: a third split (same forms), disjoint from both by id and text, on which every
    condition is re-run once after development (:mod:`moelens.tasks.study.protocol`); the table's
    ``stage`` column says ``"develop"`` or ``"confirm"``. ``correction``: ``"holm"`` (default,
    family-wise error), ``"bh"`` (Benjamini–Hochberg, false discovery rate) or ``"none"``, applied
    within each stage across every set x recipe x factor; ``beyond_random`` is ``p_vs_random_adj <
    alpha``. :meth:`StudyResult.findings` lists what survives.

    ``checkpoint``: a folder; the statistics, the driver sweep and every evaluation are saved as they
    finish, and a rerun of the same study (same model, records and arguments) resumes where an
    interruption stopped it (:mod:`moelens.tasks.study.checkpoint`). The router LoRA of
    ``tune_steps`` is retrained on a rerun (seeded, so the same).

    ``model``: any backend of :class:`~moelens.backends.protocol.MoEBackend`. Through
    ``NNsightMoE`` (forward traces only) the study takes ``driver_method="exact"`` and
    ``tune_steps=0`` and gives the same table as through ``HookedMoE``.

    >>> from moelens import HookedMoE
    >>> model = HookedMoE.from_pretrained("moelens/mixtral-tiny")
    >>> from moelens.tasks.demo import demo_sentiment_records  # labelled reviews shipped with moelens
    >>> reviews = demo_sentiment_records()
    >>> study = reweighting_study(model, "sst2", select_on=reviews[:8], evaluate_on=reviews[8:16], n_experts=2,
    ...                           n_random=1, factors=(1.2,), driver_method="first_order", progress=False)
    >>> sorted(set(study.table["expert_set"]))
    ['baseline', 'domain', 'driver', 'random (domain)', 'random (driver)']
    """
    from ...analysis import collect_routing_stats, driver_effects

    spec = get_task(task)
    factors = _check_study_settings(n_random, factors, n_experts, tune_steps, tune_rank, batch_size, push, select_limit, limit, seed)
    _check_backend(model, driver_method, tune_steps)
    if on not in ("logits", "weights"):
        raise InvalidInputError(f"on={on!r} must be 'logits' or 'weights'.")
    recipes = (recipes,) if isinstance(recipes, str) else tuple(recipes) if recipes is not None else (f"scale-{on}",)
    for recipe in recipes:
        expert_interventions([], recipe, 1.0)  # validates the name
    if driver_method not in ("exact", "first_order"):
        raise InvalidInputError(f"driver_method={driver_method!r} must be 'exact' or 'first_order'.")
    if not 1 <= n_experts <= len(model.cfg.moe_layers) * model.cfg.n_experts:
        raise InvalidInputError(f"n_experts={n_experts} must be in [1, {len(model.cfg.moe_layers) * model.cfg.n_experts}].")
    if correction not in CORRECTIONS:
        raise InvalidInputError(f"correction={correction!r} is not valid; choose one of {', '.join(map(repr, CORRECTIONS))}.")
    if not 0 < alpha < 1:
        raise InvalidInputError(f"alpha={alpha!r} must be in (0, 1).")
    select, select_label = _records(spec, select_on, spec.select_split, select_limit, data_dir)
    evaluation, eval_label = _records(spec, evaluate_on, spec.eval_split, limit, data_dir)
    check_disjoint(select, evaluation)
    confirmation, confirm_label = None, None
    if confirm_on is not None:
        confirmation, confirm_label = _records(spec, confirm_on, spec.eval_split, limit, data_dir)
        check_disjoint(select, confirmation, ("selection", "confirmation"))
        check_disjoint(evaluation, confirmation, ("development", "confirmation"))
    prompts = [format_prompt(r) for r in select]
    domain = prompt_kind(select[0])

    folder = None if checkpoint is None else Path(checkpoint)
    stats = collect_routing_stats(model, {domain: prompts, **_contrast(domain, len(prompts), data_dir)}, batch_size=batch_size,
                                  progress=progress, checkpoint=None if folder is None else folder / "stats")
    domain_frame = stats.domain_experts(domain, top=n_experts)
    effects = driver_effects(model, prompts, method=driver_method, progress=progress,
                             checkpoint=None if folder is None else folder / "drivers")
    sets = {
        "domain": [(int(r.layer), int(r.expert)) for r in domain_frame.itertuples()],
        "driver": [(int(r.layer), int(r.expert)) for r in effects.top(n_experts).itertuples()],
    }
    randoms = {name: matched_random_sets(chosen, model.cfg.n_experts, n_random, seed + i) for i, (name, chosen) in enumerate(list(sets.items()))}
    for name, draws in randoms.items():
        if len({tuple(draw) for draw in draws}) < len(draws):
            warnings.warn(f"the random controls of the {name} experts repeat: their layers have too few other experts for "
                          f"{n_random} distinct draws (e.g. the complement of half a layer); they count as {len(draws)} draws anyway.",
                          stacklevel=2)
    all_sets = {**sets, **{f"random ({name})#{d}": draw for name, draws in randoms.items() for d, draw in enumerate(draws)}}
    neg = _negative_share(model, prompts[:64], all_sets, batch_size)

    name = model_name or _model_name(model)
    meta = {"model": name, "task": spec.name}
    conditions = [(recipe, factor) for recipe in recipes for factor in factors]
    tuned = None
    if tune_steps > 0:
        from ..lora import tune_router

        tuned = tune_router(model, spec, data=select, steps=tune_steps, rank=tune_rank, seed=seed, progress=progress)
    stages = [("develop", evaluation)] + ([("confirm", confirmation)] if confirmation is not None else [])
    per_stage = 1 + len(conditions) * len(sets) * (1 + n_random) + (tuned is not None)
    fingerprint = {"task": spec.name, "select": records_digest(select), "evaluate": records_digest(evaluation),
                   "confirm": records_digest(confirmation), "contrast_domains": sorted(stats.domains), "n_experts": n_experts,
                   "n_random": n_random, "factors": list(factors), "recipes": list(recipes), "push": push,
                   "driver_method": driver_method, "tune_steps": tune_steps, "tune_rank": tune_rank, "batch_size": batch_size,
                   "seed": seed, "sets": {k: [list(x) for x in v] for k, v in all_sets.items()}}
    run_eval = StudyEvaluations(model, None if folder is None else folder / "evaluations", fingerprint, len(stages) * per_stage, progress)
    rows: list[dict] = []
    results: dict[str, Any] = {}
    try:
        for stage, records in stages:
            stage_rows, stage_results = evaluate_stage(
                model, spec, records, stage, sets, randoms, conditions, expert_interventions, neg, meta, seed, batch_size, push,
                run_eval, tuned,
            )
            rows += stage_rows
            results.update(stage_results)
    finally:
        run_eval.close()
    table = apply_correction(pd.DataFrame(rows), list(sets), correction, alpha)[COLUMNS]
    meta.update(select_on=select_label, evaluate_on=eval_label, n_select=len(select), n_eval=len(evaluation), n_experts=n_experts,
                n_random=n_random, factors=list(factors), recipes=list(recipes), push=push, driver_method=driver_method,
                tune_steps=tune_steps, seed=seed, confirm_on=confirm_label,
                n_confirm=0 if confirmation is None else len(confirmation), correction=correction, alpha=alpha)
    return StudyResult(table, meta, {**sets, **{k: v for k, v in all_sets.items() if k not in sets}}, results)
