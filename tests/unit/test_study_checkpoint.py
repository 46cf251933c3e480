"""reweighting_study(checkpoint=...): an interrupted study resumes with the same table, and an
unfinished checkpoint of another study (another model) is refused, never mixed in."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import moelens.tasks.study.protocol as protocol
from moelens import HookedMoE, reweighting_study
from moelens.errors import CheckpointError
from moelens.tasks.demo import demo_sentiment_records

pytestmark = pytest.mark.filterwarnings("ignore:no local .* data")  # without ../shared the contrast is the demo texts

REVIEWS = demo_sentiment_records()
SETTINGS = dict(select_on=REVIEWS[:8], evaluate_on=REVIEWS[8:16], confirm_on=REVIEWS[16:24], n_experts=2, n_random=1,
                factors=(1.2,), driver_method="first_order", progress=False)
TOTAL = 2 * (1 + 2 * 2)
REAL_EVALUATE = protocol.evaluate  # stages x (baseline + sets x (set + 1 random draw))


def _model() -> HookedMoE:
    return HookedMoE.from_pretrained("moelens/mixtral-tiny", dtype=torch.float32)


def _counting(monkeypatch, stop_after: int | None = None) -> list[int]:
    calls = []

    def evaluate(*args, **kwargs):
        calls.append(1)
        if stop_after is not None and len(calls) > stop_after:
            raise KeyboardInterrupt
        return REAL_EVALUATE(*args, **kwargs)

    monkeypatch.setattr(protocol, "evaluate", evaluate)
    return calls


def test_an_interrupted_study_resumes_with_the_same_table(tmp_path, monkeypatch):
    model = _model()
    whole = _counting(monkeypatch)
    reference = reweighting_study(model, "sst2", **SETTINGS)
    assert len(whole) == TOTAL
    _counting(monkeypatch, stop_after=3)
    with pytest.raises(KeyboardInterrupt):
        reweighting_study(model, "sst2", checkpoint=tmp_path, **SETTINGS)
    rest = _counting(monkeypatch)
    resumed = reweighting_study(model, "sst2", checkpoint=tmp_path, **SETTINGS)
    assert len(rest) == TOTAL - 3  # the three finished evaluations came from the checkpoint
    pd.testing.assert_frame_equal(resumed.table, reference.table)
    again = _counting(monkeypatch)
    reweighting_study(model, "sst2", checkpoint=tmp_path, **SETTINGS)
    assert len(again) == 0  # a finished study is read back whole


def test_another_models_unfinished_study_is_refused(tmp_path, monkeypatch):
    model = _model()
    _counting(monkeypatch, stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        reweighting_study(model, "sst2", checkpoint=tmp_path, **SETTINGS)
    _counting(monkeypatch)
    other = _model()
    with torch.no_grad():  # a slightly edited router: another model for the fingerprint
        router = next(p for name, p in other.hf_model.named_parameters() if "gate" in name and p.ndim == 2)
        router.mul_(1.02)
    with pytest.raises(CheckpointError, match="interrupted run"):
        reweighting_study(other, "sst2", checkpoint=tmp_path, **SETTINGS)
