"""Token triggers: which tokens, and which positions, make the router pick given experts.

:func:`token_triggers` runs the texts once (batched, routing hooks only) and keeps, for every
non-padding token that is not a special token (BOS sits at position 0 of every text, so an expert
that fires on BOS would look "early"; ``special_ids`` says which ids, by default the tokenizer's):

- a firing table for the selected (layer, expert) pairs: fired (the expert is in the top-k at that
  token) and its gate weight;
- for *every* expert of every MoE layer, per text, the number of firings in the first decile, the
  middle and the last decile of the text's kept tokens, so that the same statistic can be computed
  for the other experts as a control.

A token's relative position is its index ``i`` among the text's ``n`` kept tokens; its decile is
``floor(10 i / n)``. See :class:`TokenTriggers` for the tables and
:meth:`TokenTriggers.early_vs_late` for the paper's "early tokens trigger drivers" test.

>>> from moelens import HookedMoE
>>> from moelens.testing import tiny_model
>>> model = HookedMoE.from_hf(tiny_model("mixtral"))
>>> ids = torch.randint(3, 97, (4, 12), generator=torch.Generator().manual_seed(0))
>>> trig = token_triggers(model, ids, experts=[(0, 1), (1, 2)], progress=False)
>>> trig.fired.shape  # [token selected_expert]
torch.Size([48, 2])
>>> list(trig.top_tokens(3, min_count=1).columns)[:4]
['layer', 'expert', 'token_id', 'token']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from moelens._selectors import resolve_expert, resolve_layer
from moelens.errors import InvalidInputError
from moelens.lazy import pandas as pd
from moelens.names import moe_name

from ..drivers.options import SweepInputs, positive_int
from .result import EarlyLate, TokenTriggers

if TYPE_CHECKING:
    from moelens.model import HookedMoE

__all__ = ["EarlyLate", "TokenTriggers", "token_triggers"]


def _selection(model: HookedMoE, experts: Any) -> list[tuple[int, int]]:
    """(layer, expert) pairs from a list of pairs, a frame with ``layer``/``expert`` columns (e.g.
    ``effects.top(10)``, ``stats.domain_experts()``) or a result with ``top()`` (its top 10)."""
    if hasattr(experts, "top") and not isinstance(experts, pd.DataFrame):
        experts = experts.top(10)
    if isinstance(experts, pd.DataFrame):
        if not {"layer", "expert"} <= set(experts.columns):
            raise InvalidInputError(f"experts is a DataFrame without 'layer' and 'expert' columns (columns: {list(experts.columns)}).")
        experts = list(zip(experts["layer"].astype(int), experts["expert"].astype(int), strict=True))
    if not isinstance(experts, (list, tuple)) or not experts:
        raise InvalidInputError(
            f"experts={experts!r}: pass a non-empty list of (layer, expert) pairs, a DataFrame with layer/expert "
            "columns (e.g. effects.top(10)), or a DriverEffects."
        )
    pairs = []
    for item in experts:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise InvalidInputError(f"experts item {item!r} is not a (layer, expert) pair.")
        layer = resolve_layer(model, item[0], f"experts item {item!r}: layer")
        expert = resolve_expert(model, item[1], f"experts item {item!r}: expert")
        if (layer, expert) not in pairs:
            pairs.append((layer, expert))
    return pairs


def _special_ids(model: HookedMoE, special_ids: Sequence[int] | None, exclude_special: bool) -> list[int]:
    if not exclude_special:
        return []
    if special_ids is not None:
        bad = [i for i in special_ids if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < model.cfg.d_vocab]
        if bad or isinstance(special_ids, (str, bytes)):
            raise InvalidInputError(f"special_ids={special_ids!r}: {bad[0] if bad else special_ids!r} is not a token id of this "
                                    f"model (ints in [0, {model.cfg.d_vocab - 1}]); pass the ids to leave out, e.g. tokenizer.all_special_ids.")
        return sorted({int(i) for i in special_ids})
    tokenizer = model.tokenizer
    return sorted(set(tokenizer.all_special_ids)) if tokenizer is not None else []


def token_triggers(
    model: HookedMoE,
    texts: str | Sequence[str] | Tensor,
    experts: Any,
    *,
    attention_mask: Tensor | None = None,
    exclude_special: bool = True,
    special_ids: Sequence[int] | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> TokenTriggers:
    """Firing table of the selected experts and per-text decile counts of every expert.

    ``texts``: texts, or token ids ``[batch pos]`` with an optional ``attention_mask``. ``experts``:
    (layer, expert) pairs, a DataFrame with ``layer``/``expert`` columns (``effects.top(10)``,
    ``stats.domain_experts()``), or a :class:`~moelens.analysis.DriverEffects` (its top 10).
    ``exclude_special`` (default True) drops the ids in ``special_ids`` (default: the tokenizer's
    ``all_special_ids``; none without a tokenizer) from every table and statistic.

    >>> from moelens import HookedMoE
    >>> from moelens.testing import tiny_model
    >>> model = HookedMoE.from_hf(tiny_model("qwen2_moe"))
    >>> ids = torch.tensor([[1, 5, 6, 7, 8], [1, 9, 10, 11, 12]])
    >>> trig = token_triggers(model, ids, [(0, 0)], special_ids=[1], progress=False)
    >>> trig.n_tokens  # BOS (id 1) excluded
    8
    """
    selection = _selection(model, experts)
    batch_size = positive_int("batch_size", batch_size)
    data = SweepInputs(model, texts, attention_mask)
    special = _special_ids(model, special_ids, exclude_special)
    layers = list(model.cfg.moe_layers)
    sel_layer = torch.tensor([layers.index(layer) for layer, _ in selection])
    sel_expert = torch.tensor([expert for _, expert in selection])
    names = [moe_name(layer, s) for layer in layers for s in ("hook_topk_indices", "hook_topk_weights")]
    parts: dict[str, list[Tensor]] = {k: [] for k in ("text", "position", "rank", "n_kept", "token_id", "fired", "gate")}
    seg_fires = torch.zeros(data.n, 3, len(layers), model.cfg.n_experts, dtype=torch.int32)
    seg_tokens = torch.zeros(data.n, 3, dtype=torch.int64)
    from tqdm.auto import tqdm

    bar = tqdm(total=data.n, disable=not progress, desc="token triggers", unit="text", dynamic_ncols=True)
    try:
        for start in range(0, data.n, batch_size):
            stop = min(start + batch_size, data.n)
            ids, mask = data.batch(start, stop)
            with torch.no_grad():
                _, cache = model.run_with_cache(ids, names_filter=names, attention_mask=mask, device="cpu")
            ids, mask = ids.cpu(), mask.cpu().bool()
            keep = mask & ~torch.isin(ids, torch.tensor(special, dtype=ids.dtype))  # [b pos]
            rank = keep.long().cumsum(1) - 1  # index among the kept tokens of the row
            n_kept = keep.sum(1, keepdim=True).expand_as(rank)
            segment = _segment(rank, n_kept)  # [b pos] 0 first decile, 1 middle, 2 last decile
            fired_all = cache.topk_mask().permute(1, 2, 0, 3)  # [b pos moe_layer n_experts]
            gate_all = cache.gate_weights().permute(1, 2, 0, 3).float()
            for s in range(3):
                in_seg = keep & (segment == s)  # [b pos]
                seg_tokens[start:stop, s] = in_seg.sum(1)
                seg_fires[start:stop, s] = (fired_all & in_seg[..., None, None]).sum(1).int()
            b, p = keep.nonzero(as_tuple=True)
            parts["text"].append(b + start)
            parts["position"].append(p)
            parts["rank"].append(rank[b, p])
            parts["n_kept"].append(n_kept[b, p])
            parts["token_id"].append(ids[b, p])
            parts["fired"].append(fired_all[b, p][:, sel_layer, sel_expert])
            parts["gate"].append(gate_all[b, p][:, sel_layer, sel_expert])
            bar.update(stop - start)
    finally:
        bar.close()
    table = {k: torch.cat(v) for k, v in parts.items()}
    vocab = _decode(model, table["token_id"])
    settings = {"special_ids": special, "n_texts": data.n, "exclude_special": bool(exclude_special)}
    return TokenTriggers(selection, tuple(layers), model.cfg.n_experts, table, seg_fires, seg_tokens, vocab, settings)


def _segment(rank: Tensor, n_kept: Tensor) -> Tensor:
    """0 for the first decile of the kept tokens, 2 for the last, 1 otherwise: ``floor(10 i / n)``."""
    decile = torch.div(10 * rank.clamp_min(0), n_kept.clamp_min(1), rounding_mode="floor")
    return torch.where(decile == 0, 0, torch.where(decile == 9, 2, 1))


def _decode(model: HookedMoE, token_ids: Tensor) -> dict[int, str]:
    ids = sorted(set(token_ids.tolist()))
    if model.tokenizer is None:
        return {i: f"<{i}>" for i in ids}
    return {i: model.tokenizer.decode([i]) for i in ids}
