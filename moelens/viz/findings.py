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

__all__ = ["agreement_sentence", "as_sentence", "domain_expert_sentences", "driver_sentence", "general_expert_sentence", "overall_rate"]


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
    return (
        f"perturbing expert {int(row.expert)} of layer {int(row.layer)} changes the next-token distribution most "
        f"(mean KL {row.effect:.3g} nats); layer {layer} holds {_percent(share)} of the total effect"
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
