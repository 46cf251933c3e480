"""The statistics every analysis and task reports, in one place: bootstrap resampling (one seeded
torch implementation), percentile and Wilson intervals, the paired bootstrap and the exact McNemar
test. Sample statistics that are means or ratios of sums over items (texts, inputs, examples) are
resampled with :func:`bootstrap_counts`, so every resample is one matrix product.

>>> delta, ci, p = paired_bootstrap([1, 1, 0, 1] * 10, [0, 1, 0, 1] * 10)
>>> delta, ci[0] > 0, p < 0.05
(0.25, True, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from moelens.errors import InvalidInputError

__all__ = ["Z95", "bootstrap_ci", "bootstrap_counts", "bootstrap_p", "mcnemar_p", "paired_bootstrap", "percentile_ci", "wilson_ci"]

Z95 = 1.959963984540054  # two-sided 95% normal quantile


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


def bootstrap_p(samples: Tensor) -> float:
    """Two-sided bootstrap p-value for "the statistic is 0": twice the smaller tail of the resampled
    statistics on either side of 0, as ``(1 + count) / (1 + n)`` so that it is never 0 (at most 1;
    NaN samples dropped).

    >>> bootstrap_p(torch.ones(99))
    0.02
    """
    finite = samples[torch.isfinite(samples)]
    if len(finite) == 0:
        return float("nan")
    tail = min(int((finite <= 0).sum()), int((finite >= 0).sum()))
    return min(1.0, 2 * (1 + tail) / (1 + len(finite)))


def _resampled_means(values: Sequence[float], n_boot: int, seed: int) -> Tensor:
    x = torch.as_tensor(list(values) if not isinstance(values, Tensor) else values, dtype=torch.float64).reshape(-1)
    return bootstrap_counts(x.numel(), n_boot, seed) @ x / x.numel()  # [n_boot]


def bootstrap_ci(values: Sequence[float], n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (e.g. per-example correctness).

    >>> bootstrap_ci([1.0] * 20)
    (1.0, 1.0)
    """
    if len(values) == 0:
        return (math.nan, math.nan)
    return percentile_ci(_resampled_means(values, n_boot, seed), level)


def wilson_ci(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default); ``(0, 1)`` for ``n = 0``.

    >>> [round(x, 3) for x in wilson_ci(1, 2)]
    [0.095, 0.905]
    """
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_bootstrap(
    treated: Sequence[float], control: Sequence[float], n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, tuple[float, float], float]:
    """Mean paired difference ``treated - control``, its percentile bootstrap CI, and a two-sided
    bootstrap p-value for "no difference" (the share of resampled means on the other side of 0,
    doubled; resampling the same examples for both keeps the pairing).

    >>> delta, ci, p = paired_bootstrap([1, 1, 1, 1, 0] * 8, [0, 1, 1, 1, 0] * 8)
    >>> delta, p < 0.05
    (0.2, True)
    """
    a = torch.as_tensor([float(v) for v in treated], dtype=torch.float64)
    b = torch.as_tensor([float(v) for v in control], dtype=torch.float64)
    if a.shape != b.shape:
        raise InvalidInputError(f"paired samples must have the same length; got {tuple(a.shape)} and {tuple(b.shape)}.")
    diff = a - b
    delta = float(diff.mean()) if diff.numel() else math.nan
    if diff.numel() == 0 or not bool(diff.any()):
        return delta, (delta, delta), 1.0
    means = _resampled_means(diff, n_boot, seed)
    p = 2 * min(float((means <= 0).double().mean()), float((means >= 0).double().mean()))
    return delta, percentile_ci(means, level), min(1.0, max(p, 1 / n_boot))


def mcnemar_p(treated_correct: Sequence[bool], control_correct: Sequence[bool]) -> float:
    """Exact McNemar test: two-sided binomial test on the discordant pairs (1.0 when there are none).

    >>> round(mcnemar_p([1] * 10, [0] * 10), 4)  # 10 wins, 0 losses
    0.002
    """
    a = torch.as_tensor([bool(v) for v in treated_correct])
    b = torch.as_tensor([bool(v) for v in control_correct])
    wins, losses = int((a & ~b).sum()), int((~a & b).sum())
    if wins + losses == 0:
        return 1.0
    n, k = wins + losses, min(wins, losses)
    # two-sided exact binomial test at p = 1/2: twice the smaller tail, at most 1 (no scipy needed)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2 * tail)
