"""Token views of routing: which experts each token went to, where one expert fires, and any
per-token values (attributions, mediation by position).

Why ``TextNeuronActivations`` for :func:`routing_tokens`: it is the circuitsvis view that holds a
whole ``[token, MoE layer, expert]`` tensor, with drop-downs for the layer and the expert, so one view
covers every layer of a 64-expert model; ``ColoredTokensMulti`` lists every value of a token on
hover, which reads well for a handful of series (it is what :func:`token_values` uses for 2-D
values) but not for 64 experts per layer. The colour is the expert's applied gate weight (zero
where the token did not go to it), so hovering a token shows the weight of the chosen expert.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._selectors import resolve_layers
from ..errors import InvalidInputError
from .html import circuitsvis_text, colour_legend
from .render import View

__all__ = ["expert_tokens", "readable_tokens", "routing_tokens", "token_values", "visible_token"]

# What a reader sees for characters that would otherwise show as nothing (or break a line).
_VISIBLE = {" ": "\u2423", "\n": "\u23ce", "\t": "\u21e5", "\r": "\u240d", "\xa0": "\u2423"}


def visible_token(token: str, edges: bool = False) -> str:
    """``token`` with its whitespace made visible: a token that is only whitespace shows each
    character as ``␣`` (space), ``⏎`` (newline), ``⇥`` (tab), an empty token as ``∅``; newlines and
    tabs inside a token too; with ``edges`` also the leading and trailing spaces of a word (``␣the``),
    for views that show each token in its own cell.

    >>> visible_token(" "), visible_token("\\n\\n"), visible_token(" the"), visible_token(" the", edges=True), visible_token("")
    ('␣', '⏎⏎', ' the', '␣the', '∅')
    """
    if token == "":
        return "\u2205"
    if token.strip() == "":
        return "".join(_VISIBLE.get(ch, ch) for ch in token)
    shown = token.replace("\n", _VISIBLE["\n"]).replace("\t", _VISIBLE["\t"]).replace("\r", _VISIBLE["\r"])
    if edges:
        core = shown.strip(" ")
        start = shown.index(core)
        shown = _VISIBLE[" "] * start + core + _VISIBLE[" "] * (len(shown) - start - len(core))
    return shown

# Decoding prefixes is exact but quadratic; beyond this many tokens decode token by token.
_PREFIX_DECODE_LIMIT = 1024


def readable_tokens(tokenizer, ids: Sequence[int]) -> list[str]:
    """Token strings as a reader sees them: byte-level BPE markers (``Ġ`` space, ``Ċ`` newline) and
    SentencePiece ``▁`` become the characters they stand for, special tokens stay as they are.

    Each token is the text it adds to the decoded prefix, so the tokens concatenate to the decoded
    text (a character split over several byte tokens shows on the last of them).

    >>> from transformers import AutoTokenizer
    >>> from moelens.zoo import ZOO_DIR
    >>> tok = AutoTokenizer.from_pretrained(ZOO_DIR / "tokenizer")
    >>> readable_tokens(tok, tok("Hi there,\\nyou")["input_ids"])
    ['<s>', 'H', 'i', ' there', ',', '\\n', 'y', 'ou']
    """
    ids = [int(i) for i in ids]
    if len(ids) > _PREFIX_DECODE_LIMIT:
        return [tokenizer.decode([i]) for i in ids]
    tokens, shown = [], ""  # shown: the decoded text the tokens so far account for
    for end in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:end])
        if end < len(ids):  # an unfinished UTF-8 sequence decodes to U+FFFD: wait for its last byte
            text = text.rstrip("\ufffd")
        if text.startswith(shown):
            tokens.append(text[len(shown):])
        else:  # decoding is not prefix-stable here (rare normalisers): fall back to this token alone
            tokens.append(tokenizer.decode([ids[end - 1]]))
        shown = text
    return tokens


def _shown(tokens: Sequence[str]) -> list[str]:
    """Tokens for a circuitsvis view: whitespace made visible (a newline token keeps its line break
    after the ⏎), then escaped (circuitsvis inserts tokens with innerHTML)."""
    return circuitsvis_text([visible_token(t) + ("\n" if t.endswith("\n") else "") for t in tokens])


def layer_list(model, layer: int | Sequence[int] | None) -> list[int]:
    """The MoE layers a view shows: None (all), one, or a list (:func:`moelens._selectors.resolve_layers`)."""
    return resolve_layers(model, layer, "layer")


def _routing(model, text: str, layers: list[int]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Readable tokens, dense gate weights and router scores ``[moe_layer pos n_experts]`` of one text."""
    if not isinstance(text, str):
        raise InvalidInputError(f"text must be a str, got {type(text).__name__}; pass one text (a list goes to expert_tokens).")
    if model.tokenizer is None:
        raise InvalidInputError("this model has no tokenizer; load it with one (HookedMoE.from_hf(..., tokenizer=tok)).")
    names = [f"blocks.{layer}.moe.hook_{kind}" for layer in layers for kind in ("topk_indices", "topk_weights", "router_scores")]
    with torch.inference_mode():
        _, cache = model.run_with_cache(text, names_filter=names)
    ids = model.to_tokens(text, truncate=False)[0]
    index = torch.stack([cache[f"blocks.{layer}.moe.hook_topk_indices"][0] for layer in layers])  # [layer pos k]
    weights = torch.stack([cache[f"blocks.{layer}.moe.hook_topk_weights"][0] for layer in layers]).float()
    dense = torch.zeros(*index.shape[:-1], model.cfg.n_experts).scatter_(-1, index.cpu(), weights.cpu())
    scores = torch.stack([cache[f"blocks.{layer}.moe.hook_router_scores"][0] for layer in layers]).float().cpu()
    return readable_tokens(model.tokenizer, ids.tolist()), dense, scores


def routing_tokens(model, text: str, layer: int | Sequence[int] | None = None) -> View:
    """The tokens of ``text`` coloured by the gate weight of one expert at one MoE layer (drop-downs
    choose both; ``layer`` limits the view to one or some MoE layers, default all).

    ``view.props["activations"][pos][i][expert]`` is the applied weight of ``expert`` at position
    ``pos`` of the ``i``-th chosen layer (zero where the token did not go to it), as in
    ``cache.gate_weights()``.

    >>> from moelens import HookedMoE
    >>> model = HookedMoE.from_pretrained("moelens/mixtral-tiny")
    >>> view = routing_tokens(model, "The cat sat", layer=1)
    >>> view.props["tokens"], len(view.props["activations"][0][0])  # escaped: circuitsvis uses innerHTML
    (['&lt;s&gt;', 'The', ' cat', ' s', 'at'], 8)
    """
    layers = layer_list(model, layer)
    tokens, dense, _ = _routing(model, text, layers)
    return View(
        "TextNeuronActivations",
        {
            "tokens": _shown(tokens),
            "activations": dense.permute(1, 0, 2).tolist(),  # [pos layer expert]
            "firstDimensionName": "MoE layer",
            "secondDimensionName": "Expert",
            "firstDimensionLabels": [str(x) for x in layers],
            "secondDimensionLabels": [str(e) for e in range(model.cfg.n_experts)],
        },
        title=f"Routing: gate weight of the chosen expert per token (top-{model.cfg.top_k} of {model.cfg.n_experts})",
        legend=colour_legend(0.0, float(dense.max()), "gate weight of the chosen expert (white: not routed; ␣ space, ⏎ newline)"),
    )


def expert_tokens(model, texts: Sequence[str], layer: int, expert: int, value: str = "weight") -> View:
    """The texts, most strongly firing first, with tokens coloured by ``expert``'s gate weight at
    ``layer`` (``value="weight"``: zero where not routed) or its router score (``value="score"``).

    ``view.props["activations"][0][0][i]`` holds the values of the ``i``-th text shown; texts are
    sorted by their largest value, so the first tokens to look at come first.

    >>> from moelens import HookedMoE
    >>> model = HookedMoE.from_pretrained("moelens/mixtral-tiny")
    >>> view = expert_tokens(model, ["a b", "c d e"], layer=0, expert=1)
    >>> len(view.props["tokens"][0][0])
    2
    """
    if isinstance(texts, str):
        texts = [texts]
    if not texts:
        raise InvalidInputError("texts is empty; pass a list of at least one text.")
    if value not in ("weight", "score"):
        raise InvalidInputError(f"value={value!r}: use 'weight' (applied gate weight) or 'score' (router score).")
    layer_list(model, layer)
    if not isinstance(expert, int) or not 0 <= expert < model.cfg.n_experts:
        raise InvalidInputError(f"expert={expert!r}: pick an int in [0, {model.cfg.n_experts}).")
    samples = []
    for text in texts:
        tokens, dense, scores = _routing(model, text, [layer])
        values = (dense if value == "weight" else scores)[0, :, expert].tolist()  # [pos]
        samples.append((max(values), tokens, values))
    samples.sort(key=lambda sample: -sample[0])
    return View(
        "TopkSamples",
        {
            "tokens": [[[_shown(tokens) for _, tokens, _ in samples]]],  # [layer expert sample pos]
            "activations": [[[values for _, _, values in samples]]],
            "zerothDimensionName": "MoE layer",
            "firstDimensionName": "Expert",
            "zerothDimensionLabels": [str(layer)],
            "firstDimensionLabels": [str(expert)],
        },
        title=f"Expert {expert} of MoE layer {layer}: {'gate weight' if value == 'weight' else 'router score'} per token, strongest texts first",
        legend=colour_legend(0.0, max(sample[0] for sample in samples), ("gate weight (white: not routed)" if value == "weight" else "router score")
                             + "; ␣ space, ⏎ newline"),
    )


def token_values(
    tokens: Sequence[str], values, labels: Sequence[str] | None = None, title: str = "", signed: bool | None = None
) -> View:
    """Any per-token values as coloured tokens: ``values [pos]`` (one series; signed values get a
    diverging scale centred on 0) or ``values [pos k]`` with ``labels`` naming the k series (hover a
    token for all k). For token attribution, mediation by position and the like.

    >>> view = token_values(["a", " b"], [0.5, -1.0], title="attribution")
    >>> view.element, view.props["minValue"], view.props["maxValue"]
    ('ColoredTokens', -1.0, 1.0)
    >>> token_values(["a"], [[1.0, 2.0]], labels=["x", "y"]).element
    'ColoredTokensMulti'
    """
    try:
        values = torch.as_tensor(values, dtype=torch.float64).cpu()
    except (TypeError, ValueError, RuntimeError):
        raise InvalidInputError(f"values={str(values)[:60]!r} are not numbers; pass one number per token ([pos]) or "
                                "[pos k] numbers with labels= naming the k series.") from None
    if isinstance(tokens, (str, bytes)):
        raise InvalidInputError(f"tokens={tokens[:40]!r} is one string; pass a list of token strings (model.to_str_tokens(text)).")
    tokens = _shown(tokens)
    if values.ndim not in (1, 2) or values.shape[0] != len(tokens):
        raise InvalidInputError(
            f"values has shape {tuple(values.shape)} for {len(tokens)} tokens; pass [pos] or [pos k] with pos = len(tokens)."
        )
    if not torch.isfinite(values).all():
        raise InvalidInputError("values hold NaN or infinity; replace them (e.g. values.nan_to_num(0)) before viewing.")
    if values.ndim == 2:
        labels = [str(x) for x in labels] if labels is not None else [str(i) for i in range(values.shape[1])]
        if len(labels) != values.shape[1]:
            raise InvalidInputError(f"{len(labels)} labels for {values.shape[1]} value series; pass one label per column.")
        legend = colour_legend(float(values.min()), float(values.max()), f"value of the chosen series ({', '.join(labels)}; hover a token for all)",
                               signed=bool((values < 0).any()))
        return View("ColoredTokensMulti", {"tokens": tokens, "values": values.tolist(), "labels": labels}, title, legend=legend)
    signed = bool((values < 0).any()) if signed is None else signed
    bound = float(values.abs().max()) if len(values) else 1.0
    bound = bound or 1.0
    props = {"tokens": tokens, "values": values.tolist(), "minValue": -bound if signed else 0.0, "maxValue": bound}
    if signed:
        props |= {"negativeColor": "red", "positiveColor": "blue"}
    return View("ColoredTokens", props, title, legend=colour_legend(props["minValue"], bound, "value", signed=signed))
