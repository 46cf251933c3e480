"""The driver-expert report sections (``moelens analyze`` / ``moelens drivers``): the effects of a
:class:`DriverEffects`, and their agreement with the domain experts of a :class:`RoutingStats`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moelens.analysis.routing_stats import RoutingStats

    from .result import DriverEffects

__all__ = ["ESTIMATE", "lift_vs_effect", "write_agreement_section", "write_driver_section"]

ESTIMATE = {
    "exact": "exact sweep (one perturbed forward pass per expert)",
    "first_order": "first-order estimate (one backward pass; a Taylor approximation of the exact KL, which it can "
                   "misorder where the effect is not small)",
}


def write_driver_section(out: str | Path, effects: DriverEffects, n_texts: dict[str, int], per_domain: int, top: int = 10) -> None:
    """The "Driver experts" section; ``n_texts``: the texts per domain the effects were computed on (the first
    ``per_domain`` of each at most).

    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from moelens.analysis.drivers import DriverEffects
    >>> effects = DriverEffects(torch.rand(2, 4, dtype=torch.float64), (0, 1), 4, "exact")
    >>> with tempfile.TemporaryDirectory() as d:
    ...     write_driver_section(d, effects, {"math": 2}, per_domain=8)
    ...     [p.name.split("-", 1)[1] for p in Path(d, "sections").iterdir()]
    ['driver-experts.html']
    """
    from moelens.report import el, figure_html, table_html, write_section
    from moelens.viz.findings import as_sentence, caveat_html, caveat_sentences, driver_sentence, plural

    method = effects.method
    body = (
        el("p", f"Effect of (layer, expert) = mean KL(P ‖ Q) at the last token when the expert's router logit is perturbed. "
                f"Every number in this section is the {ESTIMATE[method]} on the same {plural(sum(n_texts.values()), 'text')}: "
                f"the first {per_domain} of each domain at most (the domains of the summary's Data table). The "
                "figures and the table come from that one computation"
                + ("" if method == "exact" else "; `moelens analyze --exact` runs the exact sweep") + ".", cls="note")
        + el("p", as_sentence(driver_sentence(effects)))
        + figure_html(effects.plot_heatmap(), "driver heatmap") + figure_html(effects.plot_layer_totals(), "driver totals by layer")
        + table_html(effects.top(top), caption=f"The {top} strongest drivers (mean KL in nats; {effects.estimator()})")
        + caveat_html(caveat_sentences(n_texts))
    )
    write_section(out, "Driver experts", body)


def lift_vs_effect(stats: RoutingStats, effects: DriverEffects, n: int = 10) -> tuple[float, int, int]:
    """Spearman of each expert's best CWAS lift (over domains) against its driver effect, over every
    (layer, expert), and how many of the top ``n`` of each are shared: ``(rho, overlap, n)``.

    >>> import torch
    >>> from moelens.analysis.drivers import DriverEffects
    >>> from moelens.analysis.routing_stats import RoutingStats
    >>> stats = RoutingStats(["a", "b"], moe_layers=(0,), n_experts=4, top_k=1)
    >>> stats.accumulate_layers("a", torch.eye(4)[[0, 0, 1]][None, None].bool(), torch.rand(1, 1, 3, 4))
    >>> stats.accumulate_layers("b", torch.eye(4)[[2, 3, 3]][None, None].bool(), torch.rand(1, 1, 3, 4))
    >>> rho, overlap, n = lift_vs_effect(stats, DriverEffects(torch.tensor([[0.4, 0.3, 0.2, 0.1]]), (0,), 4, "exact"), n=2)
    >>> n, 0 <= overlap <= 2, -1 <= rho <= 1
    (2, True, True)
    """
    from scipy.stats import spearmanr

    lift = stats.cwas_lift().nan_to_num(0).amax(0).reshape(-1).numpy()  # best lift over domains [moe_layer*expert]
    drive = effects.effect.reshape(-1).numpy()
    n = min(n, len(drive))
    overlap = len(set(lift.argsort()[-n:]) & set(drive.argsort()[-n:]))
    return float(spearmanr(lift, drive).statistic), overlap, n


def write_agreement_section(out: str | Path, stats: RoutingStats, effects: DriverEffects) -> None:
    """The "Domain experts vs driver experts" section (numbers from :func:`lift_vs_effect`)."""
    from moelens.report import el, write_section
    from moelens.viz.findings import agreement_sentence, as_sentence

    write_section(
        out, "Domain experts vs driver experts",
        el("p", as_sentence(agreement_sentence(*lift_vs_effect(stats, effects))), " The paper's claim is that the experts a "
                "domain activates most are not always the ones that drive the output."),
    )
