"""Every token's experts at every MoE layer, in one view: :func:`routing_map`.

Why a small component of our own and not circuitsvis: the question is "which experts did token t go
to, layer by layer?", a grid of categorical ids (k per cell) with a click that highlights one expert
everywhere. circuitsvis's token views colour tokens by one value series at a time
(``ColoredTokens``, ``TextNeuronActivations`` with a layer/neuron drop-down, ``TopkSamples``); none
lays tokens against layers or shows ids, so :func:`routing_tokens` needs 8-128 clicks per layer
for this question. The map is therefore a plain HTML table (server-side, escaped by
:func:`moelens.viz.el`; it reads without JavaScript) plus about a hundred lines of bundled DOM code
for hovering, pinning and highlighting (:mod:`moelens.viz.routing_map_assets`), offline like the
circuitsvis views.

Readable for big models: a cell holds only the ``top`` heaviest ids (``+n`` marks the rest; the
hover lists every expert's router score), columns are grouped by four layers, the token column and
the header stay in place while the grid scrolls, and ``layers=`` picks a few layers.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import InvalidInputError
from .html import Markup, el, script_json
from .routing_map_assets import ROUTING_MAP_SCRIPT, ROUTING_MAP_STYLE
from .tokens import layer_list, readable_tokens, visible_token

__all__ = ["RoutingMap", "routing_map"]

_HOOKS = ("topk_indices", "topk_weights", "router_scores")
_GROUP = 4  # a thicker line every this many layer columns


def expert_hue(expert: int) -> tuple[int, int]:
    """Hue and lightness (percent) of an expert's identity colour: golden-angle hues, two lightness
    levels, so neighbouring ids differ even with 128 experts."""
    return round(expert * 137.508) % 360, (78, 62)[expert % 2]


class RoutingMap:
    """The view :func:`routing_map` returns: HTML for notebooks (``_repr_html_``) and pages
    (:meth:`fragment`, :meth:`save`), and the numbers it shows.

    ``indices[i]`` / ``weights[i]`` are ``[moe_layer pos k]`` tensors of sequence ``i`` (the cached
    ``hook_topk_indices`` / ``hook_topk_weights`` of ``layers``, padding removed), ``scores[i]`` is
    ``[moe_layer pos n_experts]`` (router scores, None when a cache without them was passed),
    ``tokens[i]`` the token strings (positions count the non-padding tokens); :meth:`to_frame` has
    one row per cell. In the HTML each cell is a ``td.rm-cell`` with ``data-seq``, ``data-pos``,
    ``data-layer`` and ``data-experts`` (the ids, space-separated, in the cache's order); a selected
    expert's cells get the class ``rm-hl``.

    >>> from moelens import HookedMoE
    >>> view = routing_map(HookedMoE.from_pretrained("moelens/mixtral-tiny"), "a b", layers=[0])
    >>> view.to_frame().columns.tolist(), view.to_frame().experts[0] == tuple(view.indices[0][0, 0].tolist())
    (['sequence', 'pos', 'token', 'layer', 'experts', 'weights'], True)
    """

    def __init__(self, tokens, indices, weights, scores, layers, n_experts, top, special, title):
        self.tokens, self.indices, self.weights, self.scores = tokens, indices, weights, scores
        self.layers, self.n_experts, self.top, self.special, self.title = list(layers), n_experts, top, special, title
        self.top_k = int(indices[0].shape[-1]) if indices else 0
        self.uid = "moelens-routing-map-" + uuid.uuid4().hex[:12]

    def to_frame(self):
        """One row per (sequence, position, layer): the token, the experts (in the cache's order) and their weights."""
        import pandas as pd

        rows = [
            {"sequence": s, "pos": p, "token": self.tokens[s][p], "layer": layer,
             "experts": tuple(self.indices[s][li, p].tolist()), "weights": tuple(round(w, 6) for w in self.weights[s][li, p].tolist())}
            for s in range(len(self.tokens)) for li, layer in enumerate(self.layers) for p in range(len(self.tokens[s]))
        ]
        return pd.DataFrame(rows)

    def _legend(self, top_weight: float) -> Markup:
        swatches = [
            el("span", e, cls="rm-swatch", data_expert=e, title=f"expert {e}: click to highlight its cells",
               style="--h:{};--l:{}%".format(*expert_hue(e)))
            for e in range(self.n_experts)
        ]
        return el(
            "div", el("b", "Legend"),
            el("span", "gate weight (colour 'gate weight'): 0 ", el("span", cls="rm-ramp"), f" {top_weight:.3g}", cls="rm-legend-weight"),
            el("span", "expert identity (colour 'expert'; click one to highlight it): ", el("span", *swatches, cls="rm-swatches"),
               cls="rm-legend-expert"),
            el("span", "␣ space, ⏎ newline, ⇥ tab; special tokens in italics; +n: more experts (hover the cell)", cls="rm-legend-tokens"),
            cls="moelens-legend rm-legend", role="group", aria_label="legend",
        )

    def _controls(self) -> Markup:
        layer_options = [el("option", "every layer", value="")] + [el("option", f"layer {x}", value=x) for x in self.layers]
        return el(
            "div",
            el("label", "colour: ", el("select", el("option", "gate weight", value="weight"), el("option", "expert", value="expert"), cls="rm-mode")),
            el("label", "highlight expert: ", el("input", type="number", min=0, max=self.n_experts - 1, cls="rm-expert-input")),
            el("label", "in ", el("select", *layer_options, cls="rm-layer-select")),
            el("button", "clear", type="button", cls="rm-clear"), el("span", cls="rm-count", aria_live="polite"),
            cls="rm-controls",
        )

    def _cell(self, s: int, li: int, p: int, top_weight: float) -> Markup:
        ids, weights = self.indices[s][li, p].tolist(), self.weights[s][li, p].tolist()
        shown = list(range(len(ids))) if self.top is None else sorted(range(len(ids)), key=lambda j: -weights[j])[: self.top]
        chips = []
        for j in shown:
            share = min(max(weights[j] / top_weight, 0.0), 1.0) if top_weight > 0 else 0.0
            hue, light = expert_hue(ids[j])
            chips.append(el("span", ids[j], cls="rm-id rm-dark" if share > 0.55 else "rm-id", data_expert=ids[j],
                            title=f"expert {ids[j]}: weight {weights[j]:.4g}", style=f"--w:{share:.3f};--h:{hue};--l:{light}%"))
        if len(shown) < len(ids):
            chips.append(el("span", f"+{len(ids) - len(shown)}", cls="rm-more"))
        return el(
            "td", *chips, cls="rm-cell rm-group-start" if li % _GROUP == 0 else "rm-cell",
            data_seq=s, data_pos=p, data_layer=self.layers[li], data_layer_index=li,
            data_experts=" ".join(map(str, ids)), data_weights=" ".join(f"{w:.4g}" for w in weights),
        )

    def _grid(self, s: int, top_weight: float) -> Markup:
        head = el("tr", el("th", "pos", cls="rm-pos"), el("th", "token", cls="rm-token-head"),
                  *[el("th", f"L{x}", cls="rm-group-start" if li % _GROUP == 0 else None, title=f"MoE layer {x}")
                    for li, x in enumerate(self.layers)])
        rows = []
        for p, token in enumerate(self.tokens[s]):
            special = p in self.special[s]
            rows.append(el(
                "tr", el("td", p, cls="rm-pos"),
                el("td", visible_token(token, edges=True), cls="rm-token rm-special" if special else "rm-token", title=repr(token)),
                *[self._cell(s, li, p, top_weight) for li in range(len(self.layers))],
            ))
        return el("div", el("table", el("thead", head), el("tbody", *rows), cls="rm-grid"), cls="rm-scroll")

    def fragment(self) -> Markup:
        """The map's HTML with its style and script (self-contained; no circuitsvis bundle needed)."""
        top_weight = max((float(w.max()) for w in self.weights if w.numel()), default=1.0)
        parts: list[object] = [el("div", self.title, cls="rm-title"), self._controls(), self._legend(top_weight)]
        for s in range(len(self.tokens)):
            if len(self.tokens) > 1:
                parts.append(el("div", f"sequence {s}", cls="rm-seq-title"))
            parts.append(self._grid(s, top_weight))
        parts.append(el("div", "Hover a cell for every expert's router score there; click it to pin; click an id to "
                               "highlight every cell that routed to that expert in that layer.", cls="rm-detail"))
        scores = None if self.scores is None else [(sc * 1000).round().to(torch.int32).tolist() for sc in self.scores]
        payload = script_json({"n_experts": self.n_experts, "scores": scores})  # scores per mille: [seq layer pos expert]
        call = Markup(f'<script>window.moelensRoutingMapInit("{self.uid}", {payload});</script>')
        shown = self.top or self.top_k
        chips = min(shown + (1 if shown < self.top_k else 0), 4)  # ids per line in a cell (a "+n" mark counts): k > 4 wraps
        body = el("div", *parts, id=self.uid, cls="moelens-routing-map rm-mode-weight", style=f"--chips:{chips}")
        return Markup(ROUTING_MAP_STYLE + ROUTING_MAP_SCRIPT + body + call)

    def _repr_html_(self) -> str:
        return str(self.fragment())

    def __str__(self) -> str:
        return str(self.fragment())

    def __repr__(self) -> str:
        return f"RoutingMap({len(self.tokens)} sequence(s), MoE layers {self.layers}, {self.n_experts} experts, top-{self.top_k})"

    def save(self, path: str | Path, title: str | None = None) -> Path:
        """Write a standalone offline HTML page with this map; returns the path."""
        from .render import save_html

        return save_html(path, [self], title=title or "routing map", heading=False)


def _sequences(model, inputs) -> list[tuple[list[str], list[int] | None, dict]]:
    """(token strings, token ids or None, cached routing) per sequence, padding removed."""
    from ..cache import ActivationCache

    if isinstance(inputs, ActivationCache):
        return [(None, None, {"cache": inputs, "row": b}) for b in range(inputs.attention_mask.shape[0])]
    if isinstance(inputs, str):
        inputs = [inputs]
    if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(x, str) for x in inputs):
        if model.tokenizer is None:
            raise InvalidInputError("this model has no tokenizer, so texts cannot be read; pass token ids ([batch pos]) instead.")
        return [(None, None, {"text": text}) for text in inputs]
    try:
        ids = torch.as_tensor(inputs, dtype=torch.long)
    except (TypeError, ValueError, RuntimeError):
        raise InvalidInputError(
            f"inputs of type {type(inputs).__name__}: pass a text, a list of texts, token ids [batch pos] or a cache from run_with_cache."
        ) from None
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.numel() == 0:
        raise InvalidInputError(f"token ids of shape {tuple(ids.shape)}: pass a non-empty [batch pos] (or [pos]) tensor.")
    return [(None, None, {"ids": ids, "row": b}) for b in range(ids.shape[0])]


def routing_map(model, inputs, layers: int | Sequence[int] | None = None, top: int | None = None,
                tokens: Sequence[Sequence[str]] | None = None, max_tokens: int | None = None) -> RoutingMap:
    """Which experts every token went to, layer by layer: tokens down, MoE layers across, each cell
    the ids of the experts the token was routed to (coloured by gate weight, or by expert identity),
    with a legend; hovering a cell shows every expert's router score there, clicking an id (or a legend
    swatch, or typing an id) highlights every cell that routed to that expert.

    ``inputs``: a text, a list of texts (each run on its own, like ``model.run_with_cache(text)``),
    token ids ``[batch pos]`` (for a model without a tokenizer) or a cache from ``run_with_cache``
    (its ``topk_indices``/``topk_weights`` and, if cached, ``router_scores`` hooks; ``tokens`` names
    its positions). ``layers``: MoE layers to show (default all). ``top``: at most this many ids per
    cell, heaviest first (default all k, in the cache's order). ``max_tokens``: first tokens only.

    Each cell's experts are exactly the cached ``hook_topk_indices`` at that (layer, token):

    >>> from moelens import HookedMoE
    >>> model = HookedMoE.from_pretrained("moelens/mixtral-tiny")
    >>> view = routing_map(model, "The cat sat")
    >>> _, cache = model.run_with_cache("The cat sat")
    >>> bool((view.indices[0] == cache.topk_indices()[:, 0]).all()), view.tokens[0][:3]
    (True, ['<s>', 'The', ' cat'])
    """
    chosen = layer_list(model, layers)
    k = int(model.cfg.top_k)
    if top is not None and (not isinstance(top, int) or isinstance(top, bool) or not 1 <= top <= k):
        raise InvalidInputError(f"top={top!r}: pick an int in [1, {k}] (ids shown per cell), or None for all {k}.")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise InvalidInputError(f"max_tokens={max_tokens!r}: pick a positive int, or None for every token.")
    names = [f"blocks.{layer}.moe.hook_{kind}" for layer in chosen for kind in _HOOKS]
    special_ids = set(getattr(model.tokenizer, "all_special_ids", None) or [])
    out_tokens, out_idx, out_w, out_sc, out_special = [], [], [], [], []
    for _, _, source in _sequences(model, inputs):
        if "cache" in source:
            cache, row = source["cache"], source["row"]
            ids = None
            mask = cache.attention_mask[row].bool().cpu()
        else:
            row = 0
            run_on = source["text"] if "text" in source else source["ids"][source["row"]: source["row"] + 1]
            with torch.inference_mode():
                _, cache = model.run_with_cache(run_on, names_filter=names)
            ids = (model.to_inputs(run_on).input_ids[0] if "text" in source else source["ids"][source["row"]]).tolist()
            mask = torch.ones(len(ids), dtype=torch.bool)
        keep = mask.nonzero().squeeze(-1)[:max_tokens]
        try:
            index = torch.stack([cache[f"blocks.{x}.moe.hook_topk_indices"][row] for x in chosen]).cpu()[:, keep]  # [layer pos k]
            weight = torch.stack([cache[f"blocks.{x}.moe.hook_topk_weights"][row] for x in chosen]).float().cpu()[:, keep]
        except KeyError as error:
            raise InvalidInputError(f"the cache lacks {error}; cache the top-k hooks (names_filter=None caches them).") from None
        score_names = [f"blocks.{x}.moe.hook_router_scores" for x in chosen]
        scores = torch.stack([cache[n][row] for n in score_names]).float().cpu()[:, keep] if all(n in cache for n in score_names) else None
        n = len(keep)
        if ids is not None:
            kept = [ids[i] for i in keep.tolist()]
            shown = readable_tokens(model.tokenizer, kept) if model.tokenizer is not None else [str(i) for i in kept]
            special = {p for p, i in enumerate(kept) if i in special_ids}
        else:
            given = tokens[len(out_tokens)] if tokens is not None else None
            shown = [str(t) for t in given][:n] if given is not None else [f"#{p}" for p in range(n)]
            if len(shown) != n:
                raise InvalidInputError(f"tokens[{len(out_tokens)}] has {len(given)} strings for {n} positions; pass one per position.")
            special = set()
        out_tokens.append(shown)
        out_idx.append(index)
        out_w.append(weight)
        out_sc.append(scores)
        out_special.append(special)
    scores_all = None if any(s is None for s in out_sc) else out_sc
    title = (f"Routing map: the experts each token went to (top-{k} of {model.cfg.n_experts}"
             + (f", {top} heaviest shown" if top is not None and top < k else "") + f"), MoE layers {chosen[0]}..{chosen[-1]}")
    return RoutingMap(out_tokens, out_idx, out_w, scores_all, chosen, int(model.cfg.n_experts), top, out_special, title)
