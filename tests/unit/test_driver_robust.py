"""Robust aggregates of driver effects against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from moelens import InvalidInputError
from moelens.analysis.drivers import DriverEffects
from moelens.analysis.drivers.robust import (
    input_shares,
    layer_shares,
    median_effect,
    pool_effects,
    robust_frame,
)


def _effects(per_input, layers=(1, 2), settings=None):
    per_input = torch.as_tensor(per_input, dtype=torch.float64)
    settings = {"magnitude": 1.0, "sign": -1, "positions": "last", "n_inputs": per_input.shape[0], **(settings or {})}
    return DriverEffects(per_input.mean(0), layers, per_input.shape[2], "exact", settings, per_input)


# 4 inputs x 2 layers x 2 experts; input 3 is an outlier concentrated on layer 2
PER_INPUT = [
    [[1.0, 0.0], [0.5, 0.5]],
    [[2.0, 0.0], [0.5, 0.5]],
    [[3.0, 1.0], [0.0, 1.0]],
    [[0.0, 0.0], [40.0, 0.0]],
]


def test_median_and_shares_by_hand():
    e = _effects(PER_INPUT)
    assert median_effect(e).tolist() == [[1.5, 0.0], [0.5, 0.5]]
    totals = torch.tensor([2.0, 3.0, 5.0, 40.0], dtype=torch.float64)
    assert torch.allclose(input_shares(e), totals / 50)
    frame = robust_frame(e)
    row = frame[(frame.layer == 2) & (frame.expert == 0)].iloc[0]
    assert row["mean"] == pytest.approx(41 / 4) and row["median"] == 0.5 and row["top_input_share"] == pytest.approx(40 / 41)
    assert row.rank_mean == 1 and row.rank_median == 2  # the outlier makes it first only by the mean


def test_layer_shares_with_a_bootstrap_interval():
    e = _effects(PER_INPUT)
    shares = layer_shares(e, n_boot=2000, seed=3)
    assert shares.share.tolist() == pytest.approx([7 / 50, 43 / 50])
    assert (shares.lo <= shares.share).all() and (shares.share <= shares.hi).all()
    assert shares.hi[0] - shares.lo[0] > 0.3  # one input dominates: the interval is wide
    assert shares.median_share.tolist() == pytest.approx([1.5 / 2.5, 1.0 / 2.5])  # medians: layer 1 leads
    assert shares.top_input_share.tolist() == pytest.approx([4 / 7, 40 / 43])
    # one resample, recomputed by hand from the same resampling counts
    from moelens.stats import bootstrap_counts

    counts = bootstrap_counts(4, 1, 11)[0]
    by_layer = (counts[:, None] * torch.tensor(PER_INPUT, dtype=torch.float64).sum(2)).sum(0)
    one = layer_shares(e, n_boot=1, seed=11)
    assert one.lo.tolist() == pytest.approx((by_layer / by_layer.sum()).tolist()) and one.lo.tolist() == one.hi.tolist()


def test_pooling_concatenates_inputs():
    a, b = _effects(PER_INPUT[:2]), _effects(PER_INPUT[2:])
    pooled = pool_effects([a, b])
    assert torch.equal(pooled.per_input, torch.tensor(PER_INPUT, dtype=torch.float64))
    assert torch.allclose(pooled.effect, _effects(PER_INPUT).effect) and pooled.n_inputs == 4
    with pytest.raises(InvalidInputError, match="cannot be pooled"):
        pool_effects([a, _effects(PER_INPUT[:2], settings={"sign": 1})])


def test_methods_delegate():
    e = _effects(PER_INPUT)
    assert torch.equal(e.median(), median_effect(e)) and torch.equal(e.input_shares(), input_shares(e))
    assert e.robust_frame().equals(robust_frame(e)) and e.layer_shares(n_boot=50).equals(layer_shares(e, n_boot=50))
    assert torch.equal(DriverEffects.pool([e, e]).per_input, torch.cat([e.per_input, e.per_input]))


def test_missing_per_input_is_explained():
    e = DriverEffects(torch.zeros(1, 2, dtype=torch.float64), (0,), 2, "exact")
    with pytest.raises(InvalidInputError, match="per_input=True"):
        median_effect(e)
