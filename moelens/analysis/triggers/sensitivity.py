"""How much the early-tokens verdict depends on choices the analyst makes: which tokens count
(special tokens, prompt-template tokens) and how the drivers were chosen (one protocol per column
of experts). One :meth:`~moelens.analysis.triggers.TokenTriggers.early_vs_late` per cell."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
from torch import Tensor

from moelens.errors import InvalidInputError

from .run import token_triggers

if TYPE_CHECKING:
    from moelens.model import HookedMoE

__all__ = ["early_late_sensitivity"]


def early_late_sensitivity(
    model: HookedMoE,
    texts: Sequence[str] | Tensor,
    protocols: Mapping[str, Any],
    *,
    template_ids: Sequence[int] = (),
    attention_mask: Tensor | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    n_matched: int = 3,
) -> pd.DataFrame:
    """The early-vs-late test for each driver-selection protocol (``{name: experts}``, each as
    :func:`~moelens.token_triggers` takes them, e.g. ``effects.top(10)``) under each token set:
    ``"special excluded"`` (the default analysis), ``"special included"`` and, when
    ``template_ids`` are given, ``"special + template excluded"``.

    Returns one row per (protocol, tokens): ``protocol, tokens, n_selected, diff, lo, hi,
    matched_diff, matched_lo, matched_hi, matched_p, verdict``. A claim whose verdict changes across rows
    depends on those choices.

    >>> import torch
    >>> from moelens import HookedMoE
    >>> from moelens.testing import tiny_model
    >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
    >>> ids = torch.randint(3, 97, (8, 12), generator=torch.Generator().manual_seed(0))
    >>> frame = early_late_sensitivity(model, ids, {"a": [(0, 1)], "b": [(1, 2)]}, template_ids=[5], n_boot=50)
    >>> frame[["protocol", "tokens"]].values.tolist()[:3]
    [['a', 'special excluded'], ['a', 'special included'], ['a', 'special + template excluded']]
    """
    if not isinstance(protocols, Mapping) or not protocols:
        raise InvalidInputError(f"protocols={protocols!r}: pass a non-empty {{name: experts}} dict (e.g. {{'sst2': effects.top(10)}}).")
    special = list(model.tokenizer.all_special_ids) if model.tokenizer is not None else []
    variants: list[tuple[str, dict[str, Any]]] = [
        ("special excluded", {"special_ids": special}),
        ("special included", {"exclude_special": False}),
    ]
    if template_ids:
        variants.append(("special + template excluded", {"special_ids": sorted({*special, *map(int, template_ids)})}))
    rows = []
    for name, experts in protocols.items():
        for label, kwargs in variants:
            trig = token_triggers(model, texts, experts, attention_mask=attention_mask, progress=False, **kwargs)
            res = trig.early_vs_late(n_boot=n_boot, seed=seed, n_matched=n_matched)
            rows.append({
                "protocol": name, "tokens": label, "n_selected": res.n_selected, "diff": res.diff, "lo": res.ci[0],
                "hi": res.ci[1], "matched_diff": res.matched_diff, "matched_lo": res.matched_ci[0],
                "matched_hi": res.matched_ci[1], "matched_p": res.matched_p, "verdict": res.verdict,
            })
    return pd.DataFrame(rows)
