"""``moelens.evaluate``: a task's accuracy (and weighted F1, CIs, per-example predictions) under
any interventions, through any backend (:class:`~moelens.HookedMoE`, ``NNsightMoE``).

>>> from moelens import HookedMoE
>>> model = HookedMoE.from_pretrained("moelens/mixtral-tiny")
>>> records = [{"id": "a", "text": "a gem .", "label": 1}, {"id": "b", "text": "dull .", "label": 0}]
>>> res = evaluate(model, "sst2", data=records, progress=False)
>>> res.n, len(res.predictions)
(2, 2)
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from moelens.lazy import pandas as pd

from ..errors import InvalidInputError
from ..results import Result
from .prompts import few_shot_prompt, format_prompt
from .registry import Task, get_task, task_records
from .scoring import (
    bootstrap_ci,
    choice_logprobs,
    greedy_generate,
    weighted_f1,
    wilson_ci,
)

__all__ = ["EvalResult", "evaluate", "resolve_records", "split_or_records", "spread"]

Record = dict[str, Any]


@dataclass(repr=False)
class EvalResult(Result):
    """A task's score: accuracy, weighted F1 (NaN for free answers), 95% Wilson and bootstrap CIs,
    and per example: id, gold, prediction, correctness, choice scores ``[n n_choices]`` (choice
    tasks) or the generated text (free answers), and a group (MMLU subject).

    >>> import numpy as np
    >>> res = EvalResult("sst2", ["a", "b"], [1, 0], [1, 1], np.array([True, False]))
    >>> res
    EvalResult(sst2: n=2, accuracy=0.500 [0.095, 0.905])
    """

    task: str
    ids: list[str]
    golds: list[Any]
    predictions: list[Any]
    correct: np.ndarray  # [n] bool
    scores: Tensor | None = None  # [n n_choices] summed log-probabilities
    outputs: list[str] | None = None  # generated texts
    groups: list[str] | None = None
    interventions: list[dict] = field(default_factory=list)

    FORMAT, VERSION = "moelens.EvalResult", 1

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if self.n else float("nan")

    @property
    def f1(self) -> float:
        """Weighted F1 over the gold classes (choice tasks); NaN for free answers."""
        return weighted_f1(self.predictions, self.golds) if self.scores is not None else float("nan")

    @property
    def ci(self) -> tuple[float, float]:
        """95% Wilson interval of the accuracy."""
        return wilson_ci(int(self.correct.sum()), self.n)

    @property
    def ci_bootstrap(self) -> tuple[float, float]:
        """95% percentile bootstrap interval of the accuracy."""
        return bootstrap_ci(self.correct.astype(float))

    def by_group(self) -> pd.DataFrame:
        """Accuracy per group (MMLU subject), with n and the Wilson CI."""
        frame = self.to_frame()
        if "group" not in frame:
            raise InvalidInputError(f"this result ({self.task}) has no groups; MMLU results group by subject.")
        rows = []
        for group, part in frame.groupby("group", sort=True):
            lo, hi = wilson_ci(int(part["correct"].sum()), len(part))
            rows.append({"group": group, "n": len(part), "accuracy": part["correct"].mean(), "ci_low": lo, "ci_high": hi})
        return pd.DataFrame(rows)

    def to_frame(self) -> pd.DataFrame:
        """One row per example: id, gold, prediction, correct, (group), (output), (score_<i> per choice)."""
        frame = pd.DataFrame({"id": self.ids, "gold": self.golds, "prediction": self.predictions, "correct": self.correct})
        if self.groups is not None:
            frame["group"] = self.groups
        if self.outputs is not None:
            frame["output"] = self.outputs
        if self.scores is not None:
            for j in range(self.scores.shape[1]):
                frame[f"score_{j}"] = self.scores[:, j].numpy()
        return frame

    def summary(self) -> dict:
        lo, hi = self.ci
        return {"task": self.task, "n": self.n, "accuracy": self.accuracy, "f1": self.f1, "ci_low": lo, "ci_high": hi}

    def _draw(self, ax) -> None:
        """Accuracy with its 95% Wilson interval: one bar, or one per group (MMLU subject)."""
        frame = self.by_group() if self.groups is not None else pd.DataFrame(
            [{"group": self.task, "accuracy": self.accuracy, "ci_low": self.ci[0], "ci_high": self.ci[1]}])
        err = np.vstack([frame["accuracy"] - frame["ci_low"], frame["ci_high"] - frame["accuracy"]])
        ax.bar(range(len(frame)), frame["accuracy"], yerr=err, capsize=3, color="tab:blue")
        ax.set_xticks(range(len(frame)), frame["group"], rotation=60 if len(frame) > 4 else 0, ha="right" if len(frame) > 4 else "center", fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        ax.set_title(f"{self.task}: n={self.n}, accuracy {self.accuracy:.3f}", fontsize=10)

    def _state(self) -> tuple[dict[str, Tensor], dict]:
        tensors = {"correct": torch.as_tensor(np.asarray(self.correct, dtype=bool))}
        if self.scores is not None:
            tensors["scores"] = self.scores
        meta = {"task": self.task, "ids": self.ids, "golds": self.golds, "predictions": self.predictions,
                "outputs": self.outputs, "groups": self.groups, "interventions": self.interventions}
        return tensors, meta

    @classmethod
    def _from_state(cls, tensors: dict[str, Tensor], meta: dict) -> EvalResult:
        return cls(meta["task"], meta["ids"], meta["golds"], meta["predictions"], tensors["correct"].numpy().astype(bool),
                   tensors.get("scores"), meta["outputs"], meta["groups"], meta["interventions"])

    @classmethod
    def load(cls, path: str | Path) -> EvalResult:
        """Read what :meth:`save` wrote (also a JSON-only file of moelens <= 0.x's ``EvalResult.save``)."""
        legacy = Path(path).with_suffix(".json")
        if legacy.is_file() and not Path(path).with_suffix(".safetensors").is_file():
            data = json.loads(legacy.read_text(encoding="utf-8"))
            if "format" not in data:
                scores = None if data["scores"] is None else torch.tensor(data["scores"], dtype=torch.float32)
                return cls(data["task"], data["ids"], data["golds"], data["predictions"], np.array(data["correct"], dtype=bool),
                           scores, data["outputs"], data["groups"], data["interventions"])
        return super().load(path)

    def _html_table(self) -> pd.DataFrame:
        return pd.DataFrame([self.summary()])

    def __repr__(self) -> str:
        lo, hi = self.ci
        f1 = "" if np.isnan(self.f1) else f", f1={self.f1:.3f}"
        return f"EvalResult({self.task}: n={self.n}, accuracy={self.accuracy:.3f} [{lo:.3f}, {hi:.3f}]{f1})"


def spread(records: Sequence[Record], limit: int | None) -> list[Record]:
    """``limit`` records evenly spaced over ``records`` (all of them if ``limit`` is None or larger):
    files sorted by subject or label still give a mixed subset.

    >>> [r["i"] for r in spread([{"i": i} for i in range(10)], 3)]
    [0, 3, 6]
    """
    if limit is None or limit >= len(records):
        return list(records)
    if limit < 1:
        raise InvalidInputError(f"limit={limit} must be >= 1 or None.")
    return [records[(i * len(records)) // limit] for i in range(limit)]


def resolve_records(task: str | Task, data: Any = None, split: str | None = None, limit: int | None = None,
                    data_dir: str | Path | None = None) -> list[Record]:
    """Records for ``task`` from ``data`` (a JSONL path, a folder, or a list of records) or, with
    ``data=None``, from the task's ``split`` (its evaluation split by default); filtered by the
    task and thinned to ``limit`` (:func:`spread`)."""
    from .data import load_records

    spec = get_task(task)
    if data is None:
        records = task_records(spec, split, data_dir)
    elif isinstance(data, (str, Path)):
        records = [r for r in load_records(data, split, data_dir=data_dir) if spec.keep(r)]
    elif isinstance(data, Sequence) and all(isinstance(r, Mapping) for r in data):
        records = [dict(r) for r in data if spec.keep(r)]
    else:
        raise InvalidInputError(f"data must be a JSONL path, a folder, or a list of records (dicts); got {type(data).__name__}.")
    for i, record in enumerate(records):
        record.setdefault("id", f"{spec.name}-{i}")
        record.setdefault("dataset", spec.dataset)
    if not records:
        raise InvalidInputError(f"no records for task {spec.name!r} (data={data!r}, split={split!r}).")
    return spread(records, limit)


def _prompts(spec: Task, records: Sequence[Record], shots: int, shot_records: Sequence[Record] | None, seed: int) -> list[str]:
    prompts = [format_prompt(r) for r in records]  # by the record's dataset, else its domain
    if shots == 0:
        return prompts
    pool = list(shot_records) if shot_records is not None else task_records(spec, spec.shot_split)
    eval_ids = {r["id"] for r in records}
    pool = [r for r in pool if r["id"] not in eval_ids]
    if len(pool) < shots:
        raise InvalidInputError(f"{shots} shots asked, but the shot split has {len(pool)} records outside the evaluated ones.")
    rng = random.Random(seed)
    out = []
    for prompt in prompts:
        chosen = rng.sample(pool, shots)
        out.append(few_shot_prompt(prompt, [(format_prompt(s), spec.label_target(s)) for s in chosen]))
    return out


def evaluate(
    model: Any,
    task: str | Task,
    data: Any = None,
    split: str | None = None,
    interventions: Any = None,
    limit: int | None = None,
    batch_size: int = 32,
    *,
    shots: int = 0,
    shot_records: Sequence[Record] | None = None,
    seed: int = 0,
    max_length: int | None = 256,
    data_dir: str | Path | None = None,
    progress: bool = True,
) -> EvalResult:
    """Evaluate ``model`` on ``task`` under ``interventions``.

    ``model``: any backend of :class:`~moelens.backends.protocol.MoEBackend` (a
    :class:`~moelens.HookedMoE`, or ``moelens.backends.nnsight.NNsightMoE``, locally or remote),
    or a bare HF causal LM without interventions. Both backends give the same predictions and
    scores.

    ``task``: ``"sst2"``, ``"sst5"``, ``"sst5_binary"``, ``"yelp"``, ``"mmlu"`` (or
    ``"mmlu:<subject|category>"``), ``"gsm8k"``, ``"math"``, ``"arithmetic"`` (see
    :mod:`moelens.tasks.registry`). ``data``: a JSONL path or folder, or a list of records in the
    ``../shared/data`` format; by default the task's ``split`` (its evaluation split) from the
    data folder, else the hub. ``limit``: that many records, evenly spaced. ``shots``: few-shot
    examples drawn (with ``seed``) from ``shot_records`` or the task's shot split, never from the
    evaluated records. Choice tasks score each choice's log-likelihood; free-answer tasks
    generate greedily and extract the answer. Each batch is one call of the backend
    (``model(ids)``, or ``run_with_interventions`` with ``interventions``: for ``NNsightMoE`` one
    trace per batch, and per generated token); with a ``HookedMoE`` an enclosing
    ``with model.intervene(...)`` applies too.

    >>> from moelens import HookedMoE, Ablate
    >>> model = HookedMoE.from_pretrained("moelens/mixtral-tiny")
    >>> recs = [{"id": str(i), "text": t, "label": y} for i, (t, y) in enumerate([("great fun .", 1), ("a mess .", 0)])]
    >>> base = evaluate(model, "sst2", data=recs, progress=False)
    >>> cut = evaluate(model, "sst2", data=recs, interventions=[Ablate("all", list(range(6)))], progress=False)
    >>> bool((base.scores != cut.scores).any())
    True

    The same through nnsight (``from_hf`` wraps the same weights; no copy):

    >>> from moelens.backends.nnsight import NNsightMoE
    >>> traced = NNsightMoE.from_hf(model.hf_model, tokenizer=model.tokenizer)
    >>> again = evaluate(traced, "sst2", data=recs, interventions=[Ablate("all", list(range(6)))], progress=False)
    >>> bool((again.scores == cut.scores).all()) and again.predictions == cut.predictions
    True
    """
    spec = get_task(task)
    records = resolve_records(spec, data, split, limit, data_dir)
    prompts = _prompts(spec, records, shots, shot_records, seed)
    items = interventions if isinstance(interventions, (list, tuple)) else ([interventions] if interventions is not None else [])
    common = {"interventions": list(items) or None, "batch_size": batch_size, "max_length": max_length, "progress": progress}
    ids = [str(r["id"]) for r in records]
    golds = [spec.gold(r) for r in records]
    groups = [str(r.get("subject")) for r in records] if spec.dataset == "mmlu" else None
    if spec.kind == "choice":
        n_choices = len(spec.choices)
        bad = [g for g in golds if not isinstance(g, int) or not 0 <= g < n_choices]
        if bad:
            raise InvalidInputError(f"task {spec.name!r} has {n_choices} choices, but gold labels {bad[:5]} are outside [0, {n_choices}).")
        scores = choice_logprobs(model, prompts, list(spec.choices), **common)
        predictions = scores.argmax(-1).tolist()
        correct = np.array([p == g for p, g in zip(predictions, golds, strict=True)], dtype=bool)
        return EvalResult(spec.name, ids, golds, predictions, correct, scores=scores, groups=groups,
                          interventions=[_as_dict(i) for i in items])
    outputs = greedy_generate(model, prompts, max_new_tokens=spec.max_new_tokens, **common)
    predictions = [spec.extract(o) for o in outputs]
    correct = np.array([spec.match(p, g) for p, g in zip(predictions, golds, strict=True)], dtype=bool)
    return EvalResult(spec.name, ids, golds, predictions, correct, outputs=outputs, groups=groups,
                      interventions=[_as_dict(i) for i in items])


def _as_dict(intervention: Any) -> dict:
    to_dict = getattr(intervention, "to_dict", None)
    return to_dict() if callable(to_dict) else {"repr": repr(intervention)}


def split_or_records(task, source: Any, default_split: str, limit: int | None, data_dir) -> tuple[list[dict], str]:
    """``(records, label)`` from data (a path or records) or, for a plain name such as
    ``"train[:100]"``, from that split; the label names where they came from.

    >>> records, label = split_or_records("sst2", [{"id": "a", "text": "fine .", "label": 1}], "validation", None, None)
    >>> len(records), label
    (1, '1 records')
    """
    if source is None or (isinstance(source, str) and "/" not in source and not source.endswith(".jsonl") and not Path(source).exists()):
        split = source or default_split
        return resolve_records(task, None, split, limit, data_dir), split
    label = str(source) if isinstance(source, (str, Path)) else f"{len(source)} records"
    return resolve_records(task, source, None, limit, data_dir), label

