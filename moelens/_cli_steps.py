"""The CLI's analysis steps: each computes its tables and writes its report sections into ``out``.

Kept apart from :mod:`moelens.cli`, which parses options, loads the model and data, and times the steps.
"""

from __future__ import annotations

import json
from pathlib import Path


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")


def run_stats(model, data: dict[str, list[str]], out: Path, progress: bool = True):
    """Routing statistics step: tables, plots and report sections."""
    from .analysis import collect_routing_stats
    from .analysis.plots import plot_cwas_heatmap, plot_general_vs_domain
    from .report import el, figure_html, table_html, write_section
    from .viz.findings import (
        as_sentence,
        caveat_html,
        caveat_sentences,
        domain_expert_sentences,
        general_expert_sentence,
    )

    stats = collect_routing_stats(model, data, batch_size=16, max_length=256, progress=progress, checkpoint=out / "checkpoints" / "stats")
    stats.save(out / "routing_stats")
    stats.to_frame().to_csv(out / "routing_stats.csv", index=False)
    domain_experts = stats.domain_experts(top=10)
    general = stats.general_experts(top=10)
    domain_experts.to_csv(out / "domain_experts.csv", index=False)
    general.to_csv(out / "general_experts.csv", index=False)
    write_section(
        out, "Domain experts",
        el("p", "CWAS = A × (1 − H): activation rate A times one minus the normalised routing entropy H. Domain experts "
                "rank by CWAS lift (CWAS in the domain minus its mean over the other domains). Our reconstruction of "
                "arXiv 2601.10159.", cls="note")
        + el("ul", *[el("li", as_sentence(sentence)) for sentence in domain_expert_sentences(stats)])
        + figure_html(plot_cwas_heatmap(stats), "CWAS heatmaps") + figure_html(plot_cwas_heatmap(stats, metric="lift"), "CWAS lift")
        + table_html(domain_experts, caption="Top 10 experts of each domain by CWAS lift (click a header to sort)")
        + caveat_html(caveat_sentences({domain: len(texts) for domain, texts in data.items()})),
    )
    write_section(
        out, "General experts",
        el("p", "High activation rate in every domain, low domain specificity: ", general_expert_sentence(stats), ".")
        + figure_html(plot_general_vs_domain(stats, general=general), "general vs domain")
        + table_html(general, caption="Experts ranked by their lowest activation rate over the domains (the first five are "
                                      "the ones labelled in the figure)"),
    )
    _token_view(model, data, out)
    return stats


def _token_view(model, data: dict[str, list[str]], out: Path, per_domain: int = 1) -> None:
    from .report import el, write_section
    from .viz import routing_tokens

    parts = [el("p", "Each text's tokens coloured by the gate weight of one expert (choose the MoE layer and the expert "
                     "above the text; zero where the token did not go to that expert). Interactive circuitsvis views, "
                     "rendered offline from the bundle inlined once in this page.", cls="note")]
    for domain, texts in data.items():
        for text in texts[:per_domain]:
            parts += [el("h3", domain), routing_tokens(model, text).fragment()]
    write_section(out, "Tokens by expert", "\n".join(parts))
    _routing_maps(model, data, out)


def _routing_maps(model, data: dict[str, list[str]], out: Path, max_tokens: int = 64) -> None:
    from .report import el, write_section
    from .viz import routing_map

    parts = [el("p", f"Every token's experts at every MoE layer, for the first text of each domain (its first {max_tokens} tokens "
                     "at most): hover a cell for every expert's router score, click an id or a legend swatch to highlight "
                     "every cell that routed to that expert.", cls="note")]
    for domain, texts in data.items():
        parts += [el("h3", domain), routing_map(model, texts[0], max_tokens=max_tokens).fragment()]
    write_section(out, "Routing map", "\n".join(parts))


_ESTIMATE = {
    "exact": "exact sweep (one perturbed forward pass per expert)",
    "first_order": "first-order estimate (one backward pass; a Taylor approximation of the exact KL, which it can "
                   "misorder where the effect is not small)",
}


def run_drivers(model, data: dict[str, list[str]], out: Path, exact: bool, progress: bool = True, per_domain: int = 8):
    """Driver-expert step: effects, plots, report section; agreement with CWAS when stats exist."""
    from .analysis.drivers import driver_effects
    from .report import el, figure_html, table_html, write_section
    from .viz.findings import as_sentence, caveat_html, caveat_sentences, driver_sentence, plural

    texts = [text for domain_texts in data.values() for text in domain_texts[:per_domain]]
    method = "exact" if exact else "first_order"
    effects = driver_effects(model, texts, method=method, progress=progress, checkpoint=out / "checkpoints" / f"drivers-{method}",
                             per_input=True)  # per-input effects: robust per-layer shares in the report
    effects.save(out / "driver_effects")
    effects.to_frame().to_csv(out / "driver_effects.csv", index=False)
    top = effects.top(10)
    body = (
        el("p", f"Effect of (layer, expert) = mean KL(P ‖ Q) at the last token when the expert's router logit is perturbed. "
                f"Every number in this section is the {_ESTIMATE[method]} on the same {plural(len(texts), 'text')}: the first "
                f"{per_domain} of each domain at most (the domains of the summary's Data table). The figures and the table "
                f"come from that one computation" + ("" if exact else "; `moelens analyze --exact` runs the exact sweep") + ".",
                cls="note")
        + el("p", as_sentence(driver_sentence(effects)))
        + figure_html(effects.plot_heatmap(), "driver heatmap") + figure_html(effects.plot_layer_totals(), "driver totals by layer")
        + table_html(top, caption=f"The 10 strongest drivers (mean KL in nats; {effects.estimator()})")
        + caveat_html(caveat_sentences({domain: min(len(t), per_domain) for domain, t in data.items()}))
    )
    write_section(out, "Driver experts", body)
    if (out / "routing_stats.safetensors").exists():
        _agreement_section(out, effects)
    return effects


def _agreement(stats, effects) -> tuple[float, int, int]:
    """Spearman of best CWAS lift vs driver effect over (layer, expert), and the top-n overlap."""
    from scipy.stats import spearmanr

    lift = stats.cwas_lift().nan_to_num(0).amax(0).reshape(-1).numpy()  # best lift over domains [moe_layer*expert]
    drive = effects.effect.reshape(-1).numpy()
    n = min(10, len(drive))
    overlap = len(set(lift.argsort()[-n:]) & set(drive.argsort()[-n:]))
    return float(spearmanr(lift, drive).statistic), overlap, n


def _agreement_section(out: Path, effects) -> None:
    from .analysis import RoutingStats
    from .report import el, write_section
    from .viz.findings import agreement_sentence, as_sentence

    rho, overlap, n = _agreement(RoutingStats.load(out / "routing_stats"), effects)
    write_section(
        out, "Domain experts vs driver experts",
        el("p", as_sentence(agreement_sentence(rho, overlap, n)), " The paper's claim is that the experts a domain "
                "activates most are not always the ones that drive the output."),
    )


def summary(out: Path, name: str, model, data: dict[str, list[str]], seconds: dict[str, float], stats=None, effects=None) -> None:
    import pandas as pd

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
        findings.append(agreement_sentence(*_agreement(stats, effects)))
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
