"""Rich notebook displays (``_repr_html_``) of the result types: a compact summary table and a
small inline SVG heatmap (no image file, no JavaScript, so they show in any notebook and offline).
Each class keeps a one-line ``_repr_html_`` that calls the function here.

>>> import torch
>>> from moelens.analysis.drivers import DriverEffects
>>> page = driver_effects_html(DriverEffects(torch.tensor([[0.1, 0.5], [0.3, 0.0]]), (0, 1), 2, "exact"))
>>> "<svg" in page and "L0E1" in page
True
"""

from __future__ import annotations

from .html import Markup, el, heatmap_svg, table

__all__ = ["cache_html", "driver_effects_html", "routing_stats_html"]


def _expert_label(layer: int, expert: int) -> str:
    return f"L{layer}E{expert}"


def _summary(rows: list[tuple[str, object]]) -> Markup:
    return el("table", el("tbody", *[el("tr", el("th", key), el("td", value, style="text-align:left")) for key, value in rows]))


def _box(kind: str, *parts: object) -> str:
    return str(el("div", el("b", kind), *parts, cls="moelens-repr"))


def routing_stats_html(stats) -> str:
    """Domains, layers, experts, tokens, the best domain expert of each domain (by CWAS lift), the
    best general experts, and a heatmap of the activation rate averaged over domains."""
    rows: list[tuple[str, object]] = [
        ("domains", ", ".join(map(str, stats.domains))),
        ("MoE layers", f"{len(stats.moe_layers)} ({stats.moe_layers[0]}..{stats.moe_layers[-1]})" if stats.moe_layers else "none"),
        ("experts", f"{stats.n_experts}, top-{stats.top_k}"),
        ("tokens", ", ".join(f"{d}: {int(stats.n_tokens[i].max())}" for i, d in enumerate(stats.domains))),
    ]
    if int(stats.n_tokens.sum()) > 0:
        best = stats.domain_experts(top=1)
        for row in best.itertuples(index=False):
            rows.append((f"top {row.domain} expert", f"{_expert_label(row.layer, row.expert)} (CWAS lift {row.lift:.3g})"))
        general = stats.general_experts(top=3)
        rows.append(("top general experts", ", ".join(_expert_label(r.layer, r.expert) for r in general.itertuples(index=False))))
    rate = stats.activation_rate.nan_to_num(0).mean(0)  # [moe_layer expert]
    heat = heatmap_svg(rate.tolist(), [f"L{x}" for x in stats.moe_layers], "activation rate, mean over domains")
    return _box("RoutingStats", _summary(rows), heat)


def driver_effects_html(effects) -> str:
    """Method, inputs, the five strongest drivers, their share by layer, and a heatmap of the effect."""
    top = effects.top(5)
    rows: list[tuple[str, object]] = [
        ("estimator", effects.estimator()), ("MoE layers", len(effects.moe_layers)),
        ("experts", effects.n_experts), ("inputs", effects.n_inputs),
        ("top drivers", ", ".join(f"{_expert_label(r.layer, r.expert)} ({r.effect:.3g})" for r in top.itertuples(index=False))),
    ]
    heat = heatmap_svg(effects.effect.double().tolist(), [f"L{x}" for x in effects.moe_layers], "driver effect (KL, nats)")
    return _box("DriverEffects", _summary(rows), heat)


def cache_html(cache) -> str:
    """Hook names with shapes and dtypes, and a heatmap of how often each expert was chosen
    (non-padding tokens) when the top-k indices were cached."""
    frame_rows = [(name, str(tuple(t.shape)), str(t.dtype).replace("torch.", "")) for name, t in cache.items()]
    import pandas as pd

    listing = table(pd.DataFrame(frame_rows, columns=["hook", "shape", "dtype"]), sortable=False, max_rows=40)
    parts: list[object] = [_summary([("activations", len(cache)), ("MoE layers", list(cache.moe_layers)),
                                     ("tokens", int(cache.attention_mask.sum()))]), listing]
    names = [f"blocks.{layer}.moe.hook_topk_indices" for layer in cache.moe_layers]
    if names and all(name in cache for name in names):
        mask = cache.topk_mask().float()  # [moe_layer batch pos n_experts]
        keep = cache.attention_mask.to(mask.device).float()[None, :, :, None]
        rate = (mask * keep).sum((1, 2)) / keep.sum().clamp(min=1)  # [moe_layer n_experts]
        parts.append(heatmap_svg(rate.cpu().tolist(), [f"L{x}" for x in cache.moe_layers], "share of tokens routed to each expert"))
    return _box("ActivationCache", *parts)
