"""EvalResult's baselines (majority-class rate, balanced accuracy), the cr and yelp tasks, and the
refusal of records that belong to another task."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import moelens
from moelens import HookedMoE, InvalidInputError
from moelens.tasks.evaluate import EvalResult
from moelens.tasks.registry import get_task

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def test_majority_and_balanced_accuracy_by_hand():
    golds = [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]  # 60% positive
    always_positive = EvalResult("cr", [str(i) for i in range(10)], golds, [1] * 10, np.array([g == 1 for g in golds]),
                                 scores=np.zeros((10, 2)))
    assert always_positive.accuracy == pytest.approx(0.6)
    assert always_positive.majority_rate == pytest.approx(0.6)
    assert always_positive.balanced_accuracy == pytest.approx(0.5)  # a constant answer: 1 / n_classes
    preds = [1, 1, 1, 0, 0, 0, 0, 0, 1, 1]  # recalls: 3/6 on class 1, 2/4 on class 0
    mixed = EvalResult("cr", [str(i) for i in range(10)], golds, preds, np.array([p == g for p, g in zip(preds, golds)]),
                       scores=np.zeros((10, 2)))
    assert mixed.accuracy == pytest.approx(0.5) and mixed.balanced_accuracy == pytest.approx(0.5)
    assert {"majority_rate", "balanced_accuracy"} <= set(mixed.summary())
    assert "majority=0.600" in repr(mixed)
    free = EvalResult("gsm8k", ["a"], ["1"], ["1"], np.array([True]), outputs=["1"])
    assert np.isnan(free.majority_rate) and np.isnan(free.balanced_accuracy)


def test_cr_and_yelp_are_registered_with_their_label_words():
    for name in ("cr", "yelp"):
        task = get_task(name)
        assert task.kind == "choice" and task.choices == (" negative", " positive")
    assert get_task("cr").eval_split == "test"


def test_records_of_another_task_are_refused():
    model = HookedMoE.from_pretrained("moelens/mixtral-tiny")
    sst2 = [{"id": "a", "dataset": "sst2", "text": "fine .", "label": 1}]
    with pytest.raises(InvalidInputError, match=r"record 1 is a 'sst2' record, but task 'yelp' scores 'yelp' records"):
        moelens.evaluate(model, "yelp", data=sst2, progress=False)
    cr = [{"id": "b", "dataset": "cr", "text": "the battery dies fast .", "label": 0},
          {"id": "c", "text": "works great .", "label": 1}]  # no dataset field: taken as the task's
    res = moelens.evaluate(model, "cr", data=cr, progress=False)
    assert res.n == 2 and res.majority_rate == 0.5


@pytest.mark.skipif(not (DATA / "yelp" / "validation.jsonl").is_file(), reason=f"no shared data at {DATA.resolve()}")
def test_yelp_validation_reports_its_baselines():
    model = HookedMoE.from_pretrained("moelens/mixtral-tiny")
    res = moelens.evaluate(model, "yelp", data_dir=DATA, limit=40, progress=False)
    golds = np.array(res.golds)
    assert res.majority_rate == pytest.approx(max(golds.mean(), 1 - golds.mean()))
    assert 0.0 <= res.balanced_accuracy <= 1.0
