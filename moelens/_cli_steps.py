"""The CLI's analysis steps: each computes its result with the library and writes its report sections.

Kept apart from :mod:`moelens.cli`, which parses options, loads the model and data, and times the steps.
The sections themselves live with their analyses (``analysis/<name>/report.py``).
"""

from __future__ import annotations

import json
from pathlib import Path


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")


def run_stats(model, data: dict[str, list[str]], out: Path, progress: bool = True):
    """Routing statistics step: tables (CSV), the domain/general expert sections and the token views."""
    from .analysis import collect_routing_stats
    from .analysis.routing_stats.report import write_routing_map_section, write_stats_sections, write_token_section

    stats = collect_routing_stats(model, data, batch_size=16, max_length=256, progress=progress, checkpoint=out / "checkpoints" / "stats")
    stats.save(out / "routing_stats")
    stats.to_frame().to_csv(out / "routing_stats.csv", index=False)
    stats.domain_experts(top=10).to_csv(out / "domain_experts.csv", index=False)
    stats.general_experts(top=10).to_csv(out / "general_experts.csv", index=False)
    write_stats_sections(out, stats, {domain: len(texts) for domain, texts in data.items()})
    write_token_section(out, model, data)
    write_routing_map_section(out, model, data)
    return stats


def run_drivers(model, data: dict[str, list[str]], out: Path, exact: bool, progress: bool = True, per_domain: int = 8):
    """Driver-expert step: effects (CSV), their section, and the agreement with CWAS when stats exist."""
    from .analysis import RoutingStats
    from .analysis.drivers import driver_effects
    from .analysis.drivers.report import write_agreement_section, write_driver_section

    texts = [text for domain_texts in data.values() for text in domain_texts[:per_domain]]
    method = "exact" if exact else "first_order"
    effects = driver_effects(model, texts, method=method, progress=progress, checkpoint=out / "checkpoints" / f"drivers-{method}",
                             per_input=True)  # per-input effects: robust per-layer shares in the report
    effects.save(out / "driver_effects")
    effects.to_frame().to_csv(out / "driver_effects.csv", index=False)
    write_driver_section(out, effects, {domain: min(len(t), per_domain) for domain, t in data.items()}, per_domain)
    if (out / "routing_stats.safetensors").exists():
        write_agreement_section(out, RoutingStats.load(out / "routing_stats"), effects)
    return effects


def summary(out: Path, name: str, model, data: dict[str, list[str]], seconds: dict[str, float], stats=None, effects=None) -> None:
    import pandas as pd

    from .analysis.drivers.report import lift_vs_effect
    from .report import el, table_html, write_section
    from .viz.findings import (
        agreement_sentence,
        as_sentence,
        caveat_html,
        caveat_sentences,
        domain_expert_sentences,
        driver_sentence,
        general_expert_sentence,
    )

    cfg = model.cfg
    findings = []
    if stats is not None:
        findings += domain_expert_sentences(stats) + [general_expert_sentence(stats)]
    if effects is not None:
        findings.append(driver_sentence(effects))
    if stats is not None and effects is not None:
        findings.append(agreement_sentence(*lift_vs_effect(stats, effects)))
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items())
    caveats = caveat_sentences({domain: len(texts) for domain, texts in data.items()})
    write_section(
        out, "Summary",
        el("p", el("b", name), f": {cfg.architecture}, {cfg.n_layers} layers (MoE layers {list(cfg.moe_layers)}), "
                               f"{cfg.n_experts} experts, top-{cfg.top_k}, {cfg.scoring} routing.")
        + (el("p", "What we found:") + el("ul", *[el("li", as_sentence(f)) for f in findings]) if findings else "")
        + caveat_html(caveats)
        + table_html(pd.DataFrame({"domain": list(data), "texts": [len(t) for t in data.values()]}), caption="Data")
        + el("p", f"Timings: {timing}.", cls="note"),
    )
    _write_json(out / "run.json", {"model": name, "cfg": cfg.__dict__, "domains": {d: len(t) for d, t in data.items()}, "seconds": seconds})
