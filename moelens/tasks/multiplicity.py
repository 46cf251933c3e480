"""Multiplicity correction for the study's many comparisons (sets x recipes x factors).

- ``"holm"`` (default): Holm's step-down adjustment, which controls the family-wise error rate
  (the chance of *any* false "beyond random") under any dependence between the tests;
- ``"bh"``: Benjamini–Hochberg, which controls the false discovery rate (the expected share of
  false findings among those declared) for independent or positively dependent tests: more
  findings, weaker guarantee;
- ``"none"``: raw p-values (the adjusted column equals the raw one).

Adjusted p-values are monotone in the raw ones and never below them; a finding is declared when
its adjusted p-value is below ``alpha``. NaN p-values are left out of the family and stay NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InvalidInputError

__all__ = ["CORRECTIONS", "adjust_pvalues"]

CORRECTIONS = ("holm", "bh", "none")


def adjust_pvalues(p: Sequence[float], method: str = "holm") -> np.ndarray:
    """Adjusted p-values of one family of tests, in the input order.

    >>> adjust_pvalues([0.01, 0.04, 0.03], "holm").round(3).tolist()
    [0.03, 0.06, 0.06]
    >>> adjust_pvalues([0.01, 0.04, 0.03], "bh").round(3).tolist()
    [0.03, 0.04, 0.04]
    >>> adjust_pvalues([0.2, float("nan")], "holm").tolist()
    [0.2, nan]
    """
    if method not in CORRECTIONS:
        raise InvalidInputError(f"correction={method!r} is not valid; choose one of {', '.join(map(repr, CORRECTIONS))}.")
    raw = np.asarray(p, dtype=float)
    out = np.full(raw.shape, np.nan)
    ok = np.isfinite(raw)
    values = raw[ok]
    m = len(values)
    if m == 0 or method == "none":
        out[ok] = values
        return out
    order = np.argsort(values, kind="stable")
    ranked = values[order]
    if method == "holm":  # p_(i) * (m - i + 1), running max from the smallest
        adjusted = np.maximum.accumulate(np.minimum(1.0, ranked * (m - np.arange(m))))
    else:  # BH: p_(i) * m / i, running min from the largest
        adjusted = np.minimum.accumulate((ranked * m / np.arange(1, m + 1))[::-1])[::-1].clip(max=1.0)
    back = np.empty(m)
    back[order] = adjusted
    out[ok] = back
    return out
