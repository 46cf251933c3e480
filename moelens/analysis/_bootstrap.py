"""Bootstrap helpers: resampling counts over items (texts, inputs) and percentile intervals."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["bootstrap_counts", "percentile_ci"]


def bootstrap_counts(n: int, n_boot: int, seed: int) -> Tensor:
    """``[n_boot n]`` float64 resampling counts: how often each of ``n`` items is drawn in each of
    ``n_boot`` resamples with replacement (seeded). A statistic that is a ratio of sums over items
    is then ``(counts @ numerators) / (counts @ denominators)`` for every resample at once.

    >>> bootstrap_counts(3, 2, 0).sum(1).tolist()
    [3.0, 3.0]
    """
    gen = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, n, (n_boot, n), generator=gen)
    return torch.zeros(n_boot, n, dtype=torch.float64).scatter_add_(1, draws, torch.ones(n_boot, n, dtype=torch.float64))


def percentile_ci(samples: Tensor, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap ``samples [n_boot]``, NaN samples dropped.

    >>> [round(x, 6) for x in percentile_ci(torch.arange(101.0), 0.9)]
    [5.0, 95.0]
    """
    finite = samples[torch.isfinite(samples)].double()
    if len(finite) == 0:
        return (math.nan, math.nan)
    alpha = (1 - level) / 2
    q = torch.quantile(finite, torch.tensor([alpha, 1 - alpha], dtype=torch.float64))
    return float(q[0]), float(q[1])
