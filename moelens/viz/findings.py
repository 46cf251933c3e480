"""Plain-language sentences computed from the results, for the report's captions and summary.

Every number in a sentence comes from the object passed in; nothing is hand-written.

>>> import torch
>>> from moelens.analysis.routing_stats import RoutingStats
>>> from moelens.metrics import topk_mask_from_indices
>>> stats = RoutingStats(["math", "prose"], moe_layers=(0,), n_experts=4, top_k=1)
>>> def routed(experts):  # [moe_layer=1 token n_experts]
...     return topk_mask_from_indices(torch.tensor(experts).unsqueeze(-1), 4)[None]
>>> stats.accumulate_layers("math", routed([0, 0, 1, 0]), torch.full((1, 4, 4), 0.25))
>>> stats.accumulate_layers("prose", routed([1, 1, 1, 0]), torch.full((1, 4, 4), 0.25))
>>> domain_expert_sentences(stats)[0]
'expert 0 of layer 0 fires on 75% of math tokens vs 50% overall'
"""

from __future__ import annotations

__all__ = [
    "MIN_TEXTS", "agreement_sentence", "as_sentence", "caveat_sentences", "domain_expert_sentences", "driver_sentence",
    "caveat_html", "general_expert_sentence", "overall_rate", "plural",
]

# Below this many texts per domain a ranking of experts is a smoke test, not a finding: with a few
# texts one long or odd text moves the rates by several points and reorders the top experts.
MIN_TEXTS = 30


def overall_rate(stats, layer_index: int, expert: int) -> float:
    """Activation rate of (layer, expert) over the tokens of all domains pooled."""
    tokens = int(stats.n_tokens[:, layer_index].sum())
    return float(stats.counts[:, layer_index, expert].sum()) / tokens if tokens else float("nan")


def as_sentence(text: str) -> str:
    """First letter upper-case (the rest unchanged, so domain names keep their case), final period.

    >>> as_sentence("expert 1 fires on SST2 tokens")
    'Expert 1 fires on SST2 tokens.'
    """
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _percent(x: float) -> str:
    return f"{100 * x:.0f}%"


def domain_expert_sentences(stats, top: int = 1) -> list[str]:
    """For each domain, its ``top`` domain experts (by CWAS lift): how often they fire on the
    domain's tokens against all tokens."""
    sentences = []
    for row in stats.domain_experts(top=top).itertuples(index=False):
        index = stats.moe_layers.index(int(row.layer))
        sentences.append(
            f"expert {int(row.expert)} of layer {int(row.layer)} fires on {_percent(row.activation_rate)} of "
            f"{row.domain} tokens vs {_percent(overall_rate(stats, index, int(row.expert)))} overall"
        )
    return sentences


def general_expert_sentence(stats) -> str:
    """The best general expert: the lowest of its activation rates over domains."""
    best = stats.general_experts(top=1)
    if best.empty:
        return "no general expert (no tokens)"
    row = next(best.itertuples(index=False))
    uniform = stats.top_k / stats.n_experts if stats.top_k else float("nan")
    return (
        f"expert {int(row.expert)} of layer {int(row.layer)} fires on at least {_percent(row.min_activation_rate)} of the "
        f"tokens of every domain (uniform routing would give {_percent(uniform)})"
    )


def driver_sentence(effects) -> str:
    """The strongest driver and the layer holding the largest share of the total effect."""
    top = effects.top(1)
    if top.empty:
        return "no driver effects"
    row = next(top.itertuples(index=False))
    totals = effects.effect.sum(1)  # [moe_layer]
    share = float(totals.max() / totals.sum()) if float(totals.sum()) > 0 else float("nan")
    layer = effects.moe_layers[int(totals.argmax())]
    method = {"exact": "exact sweep", "first_order": "first-order estimate"}.get(effects.method, str(effects.method))
    return (
        f"perturbing expert {int(row.expert)} of layer {int(row.layer)} changes the next-token distribution most "
        f"(mean KL {row.effect:.3g} nats); layer {layer} holds {_percent(share)} of the total effect "
        f"({method} over {plural(int(effects.n_inputs), 'input')})"
    )


def agreement_sentence(rho: float, overlap: int, n: int) -> str:
    """How far the most domain-specific experts are also the drivers.

    >>> agreement_sentence(0.25, 3, 10)
    'domain experts and driver experts differ: Spearman 0.25 between best CWAS lift and driver effect, 3 of the top 10 shared'
    """
    verdict = "largely coincide" if rho >= 0.7 and overlap >= n // 2 else "differ"
    return (
        f"domain experts and driver experts {verdict}: Spearman {rho:.2f} between best CWAS lift and driver effect, "
        f"{overlap} of the top {n} shared"
    )


def plural(n: int, word: str, many: str | None = None) -> str:
    """``n`` and the noun in the right number.

    >>> plural(1, "pair"), plural(3, "pair"), plural(0, "text"), plural(2, "input")
    ('1 pair', '3 pairs', '0 texts', '2 inputs')
    """
    return f"{n} {word if n == 1 else many or word + 's'}"


def caveat_sentences(texts_per_domain: dict[str, int] | None = None, intervals: dict[str, tuple[float, float]] | None = None,
                     minimum: int = MIN_TEXTS) -> list[str]:
    """Why a conclusion may not hold: fewer than ``minimum`` texts in some domain, or an interval
    (name -> (lo, hi)) that crosses zero (the data do not tell the sign).

    >>> caveat_sentences({"math": 8, "prose": 40})
    ['these conclusions rest on 8 texts in math (fewer than 30 per domain): one text more or less can reorder the top experts; rerun with more texts before quoting them']
    >>> caveat_sentences(intervals={"first - rest": (-0.01, 0.02), "last - rest": (0.1, 0.2)})
    ['the 95% interval of first - rest, [-0.01, +0.02], crosses zero: the data do not tell its sign']
    >>> caveat_sentences({"a": 30})
    []
    """
    sentences = []
    small = {domain: n for domain, n in (texts_per_domain or {}).items() if n < minimum}
    if small:
        fewest = min(small.values())
        where = ", ".join(domain for domain, n in small.items() if n == fewest)
        sentences.append(
            f"these conclusions rest on {plural(fewest, 'text')} in {where} (fewer than {minimum} per domain): one text more or "
            f"less can reorder the top experts; rerun with more texts before quoting them"
        )
    for name, (lo, hi) in (intervals or {}).items():
        if lo < 0 < hi:
            sentences.append(f"the 95% interval of {name}, [{lo:+.2g}, {hi:+.2g}], crosses zero: the data do not tell its sign")
    return sentences


def caveat_html(sentences: list[str]):
    """A "Caveat:" paragraph per sentence (empty when there is none), for report sections."""
    from .html import Markup, el

    return Markup("".join(el("p", el("b", "Caveat: "), as_sentence(s), cls="caveat") for s in sentences))
