"""The routing-statistics report sections (``moelens analyze`` / ``moelens stats``): domain and
general experts from a :class:`RoutingStats`, and the token views of a few texts.

Each function writes its section into a report folder through :func:`moelens.report.write_section`;
the CLI only computes the statistics and calls these.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moelens.model import HookedMoE

    from .result import RoutingStats

__all__ = ["write_routing_map_section", "write_stats_sections", "write_token_section"]


def write_stats_sections(out: str | Path, stats: RoutingStats, n_texts: dict[str, int], top: int = 10) -> None:
    """The "Domain experts" and "General experts" sections, their figures and tables (``n_texts``: texts per domain).

    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from moelens.analysis.routing_stats import RoutingStats
    >>> stats = RoutingStats(["a", "b"], moe_layers=(0,), n_experts=4, top_k=1)
    >>> stats.accumulate_layers("a", torch.eye(4)[[0, 0, 1]][None, None].bool(), torch.rand(1, 1, 3, 4))
    >>> stats.accumulate_layers("b", torch.eye(4)[[2, 3, 3]][None, None].bool(), torch.rand(1, 1, 3, 4))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     write_stats_sections(d, stats, {"a": 1, "b": 1}, top=2)
    ...     sorted(p.name.split("-", 1)[1] for p in Path(d, "sections").iterdir())
    ['domain-experts.html', 'general-experts.html']
    """
    from moelens.analysis.plots import plot_cwas_heatmap, plot_general_vs_domain
    from moelens.report import el, figure_html, table_html, write_section
    from moelens.viz.findings import as_sentence, caveat_html, caveat_sentences, domain_expert_sentences, general_expert_sentence

    domain_experts, general = stats.domain_experts(top=top), stats.general_experts(top=top)
    write_section(
        out, "Domain experts",
        el("p", "CWAS = A × (1 − H): activation rate A times one minus the normalised routing entropy H. Domain experts "
                "rank by CWAS lift (CWAS in the domain minus its mean over the other domains). Our reconstruction of "
                "arXiv 2601.10159.", cls="note")
        + el("ul", *[el("li", as_sentence(sentence)) for sentence in domain_expert_sentences(stats)])
        + figure_html(plot_cwas_heatmap(stats), "CWAS heatmaps") + figure_html(plot_cwas_heatmap(stats, metric="lift"), "CWAS lift")
        + table_html(domain_experts, caption=f"Top {top} experts of each domain by CWAS lift (click a header to sort)")
        + caveat_html(caveat_sentences(n_texts)),
    )
    write_section(
        out, "General experts",
        el("p", "High activation rate in every domain, low domain specificity: ", general_expert_sentence(stats), ".")
        + figure_html(plot_general_vs_domain(stats, general=general), "general vs domain")
        + table_html(general, caption="Experts ranked by their lowest activation rate over the domains (the first five are "
                                      "the ones labelled in the figure)"),
    )


def write_token_section(out: str | Path, model: HookedMoE, data: dict[str, list[str]], per_domain: int = 1) -> None:
    """The "Tokens by expert" section: circuitsvis token views of the first ``per_domain`` texts of each domain.

    >>> import tempfile
    >>> from pathlib import Path
    >>> from moelens import HookedMoE
    >>> model = HookedMoE.from_pretrained("moelens/mixtral-tiny")
    >>> with tempfile.TemporaryDirectory() as d:
    ...     write_token_section(d, model, {"math": ["2 + 2 = 4"]})
    ...     [p.name.split("-", 1)[1] for p in Path(d, "sections").iterdir()]
    ['tokens-by-expert.html']
    """
    from moelens.report import el, write_section
    from moelens.viz import routing_tokens

    parts = [el("p", "Each text's tokens coloured by the gate weight of one expert (choose the MoE layer and the expert "
                     "above the text; zero where the token did not go to that expert). Interactive circuitsvis views, "
                     "rendered offline from the bundle inlined once in this page.", cls="note")]
    for domain, texts in data.items():
        for text in texts[:per_domain]:
            parts += [el("h3", domain), routing_tokens(model, text).fragment()]
    write_section(out, "Tokens by expert", "\n".join(parts))


def write_routing_map_section(out: str | Path, model: HookedMoE, data: dict[str, list[str]], max_tokens: int = 64) -> None:
    """The "Routing map" section: one :func:`~moelens.viz.routing_map` per domain (its first text).

    >>> import tempfile
    >>> from pathlib import Path
    >>> from moelens import HookedMoE
    >>> model = HookedMoE.from_pretrained("moelens/mixtral-tiny")
    >>> with tempfile.TemporaryDirectory() as d:
    ...     write_routing_map_section(d, model, {"math": ["2 + 2 = 4"]})
    ...     "legend" in next(Path(d, "sections").iterdir()).read_text()
    True
    """
    from moelens.report import el, write_section
    from moelens.viz import routing_map

    parts = [el("p", f"Every token's experts at every MoE layer, for the first text of each domain (its first {max_tokens} tokens "
                     "at most): hover a cell for every expert's router score, click an id or a legend swatch to highlight "
                     "every cell that routed to that expert.", cls="note")]
    for domain, texts in data.items():
        parts += [el("h3", domain), routing_map(model, texts[0], max_tokens=max_tokens).fragment()]
    write_section(out, "Routing map", "\n".join(parts))
