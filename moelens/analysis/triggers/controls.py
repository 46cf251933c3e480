"""Matched control experts for the early-vs-late test: same layer, nearest overall firing rate."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["matched_controls"]


def matched_controls(selected: Tensor, candidates: Tensor, rate: Tensor, n_experts: int, n_matched: int) -> Tensor:
    """Flat indices (``layer * n_experts + expert``, repeats allowed) of the ``n_matched`` candidate
    experts of each selected expert's layer whose overall firing ``rate`` is closest to its own.

    ``selected``, ``candidates`` bool and ``rate`` float over the flat (layer, expert) axis. A
    control matched to two selected experts counts twice, so each selected expert weighs the same.

    >>> sel = torch.tensor([True, False, False, False])
    >>> cand = ~sel
    >>> matched_controls(sel, cand, torch.tensor([0.5, 0.1, 0.45, 0.6]), 4, 2).tolist()
    [2, 3]
    """
    picks: list[int] = []
    for flat in selected.nonzero().flatten().tolist():
        layer = flat // n_experts
        pool = candidates.clone()
        pool[: layer * n_experts] = False
        pool[(layer + 1) * n_experts :] = False
        ids = pool.nonzero().flatten()
        if len(ids) == 0:
            continue
        distance = (rate[ids] - rate[flat]).abs()
        order = torch.sort(distance, stable=True).indices[:n_matched]
        picks += ids[order].tolist()
    return torch.tensor(picks, dtype=torch.long)
