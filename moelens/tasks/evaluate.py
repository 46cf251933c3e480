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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from moelens.lazy import pandas as pd

from .._checks import check_count
from ..errors import InvalidInputError, ResultFileError
from ..results import Result
from .baselines import balanced_accuracy, majority_rate
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
    def majority_rate(self) -> float:
        """Accuracy of always answering the most frequent gold label (choice tasks; NaN for free
        answers): the floor an accuracy must beat (:mod:`moelens.tasks.baselines`)."""
        return majority_rate(self.golds) if self.scores is not None else float("nan")

    @property
    def balanced_accuracy(self) -> float:
        """Mean per-class recall (choice tasks; NaN for free answers): 1/n_classes for a constant answer."""
        return balanced_accuracy(self.predictions, self.golds) if self.scores is not None else float("nan")

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
        return {"task": self.task, "n": self.n, "accuracy": self.accuracy, "f1": self.f1, "ci_low": lo, "ci_high": hi,
                "majority_rate": self.majority_rate, "balanced_accuracy": self.balanced_accuracy}

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
        """Read what :meth:`save` wrote (also a JSON-only file of moelens <= 0.x's ``EvalResult.save``);
        a missing or damaged file is a :class:`~moelens.errors.ResultFileError` naming it."""
        legacy = Path(path).with_suffix(".json")
        if legacy.is_file() and not Path(path).with_suffix(".safetensors").is_file():
            try:
                data = json.loads(legacy.read_text(encoding="utf-8"))
                if isinstance(data, dict) and "format" not in data:
                    scores = None if data["scores"] is None else torch.tensor(data["scores"], dtype=torch.float32)
                    return cls(data["task"], data["ids"], data["golds"], data["predictions"], np.array(data["correct"], dtype=bool),
                               scores, data["outputs"], data["groups"], data["interventions"])
            except (ValueError, KeyError, TypeError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                raise ResultFileError(f"{legacy} is not an EvalResult written by save() ({type(error).__name__}: "
                                      f"{str(error)[:80]}); write it again with EvalResult.save().") from None
        return super().load(path)

    def _html_table(self) -> pd.DataFrame:
        return pd.DataFrame([self.summary()])

    def __repr__(self) -> str:
        lo, hi = self.ci
        f1 = "" if np.isnan(self.f1) else f", f1={self.f1:.3f}"
        base = "" if np.isnan(self.majority_rate) else (
            f", majority={self.majority_rate:.3f}, balanced={self.balanced_accuracy:.3f}")
        return f"EvalResult({self.task}: n={self.n}, accuracy={self.accuracy:.3f} [{lo:.3f}, {hi:.3f}]{f1}{base})"


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
    from .records import check_records

    spec = get_task(task)
    check_count("limit", limit, 1, optional=True)
    if data is None:
        records = task_records(spec, split, data_dir)
    elif isinstance(data, (str, Path)):
        loaded = load_records(data, split, data_dir=data_dir)
        check_records(loaded, f"data={str(data)!r}", spec)  # one checker for the API and the CLI
        records = [r for r in loaded if spec.keep(r)]
    elif isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        check_records(data, "data", spec)
        records = [dict(r) for r in data if spec.keep(r)]
    else:
        raise InvalidInputError(f"data must be a JSONL path, a folder, or a list of records (dicts); got {type(data).__name__}.")
    for i, record in enumerate(records):
        record.setdefault("id", f"{spec.name}-{i}")
        record.setdefault("dataset", spec.dataset)
    if not records:
        raise InvalidInputError(f"no records for task {spec.name!r} (data={data!r}, split={split!r}).")
    return spread(records, limit)


def _shot_pool(spec: Task, shots: int, data_dir: str | Path | None) -> list[Record]:
    """The task's shot split, from the same data folder as the evaluated split; a missing split is
    the shots' problem (named as such), not the hub's."""
    try:
        return task_records(spec, spec.shot_split, data_dir)
    except (FileNotFoundError, ImportError, InvalidInputError) as error:
        if data_dir is not None:  # the folder was named: it is the folder's gap, not the hub's
            why = f"data_dir={str(data_dir)!r} has no {spec.dataset}/{spec.shot_split.split('[')[0]}.jsonl"
        else:
            why = f"it was not found ({str(error).splitlines()[0][:160]})"
        raise InvalidInputError(f"shots={shots} draws examples from {spec.name}'s {spec.shot_split!r} split, but {why}; "
                                "pass shot_records=[...], or shots=0.") from None


def _check_settings(batch_size: Any, shots: Any, max_length: Any, seed: Any, shot_records: Any, spec: Task | None = None) -> None:
    check_count("batch_size", batch_size, 1)
    check_count("shots", shots, 0, fix="the number of few-shot examples per prompt")
    check_count("max_length", max_length, 1, optional=True, fix="prompts are cut to their first max_length tokens")
    check_count("seed", seed, 0)
    if shot_records is not None:
        from .records import check_records

        check_records(shot_records, "shot_records", spec)


def _prompts(spec: Task, records: Sequence[Record], shots: int, shot_records: Sequence[Record] | None, seed: int,
             data_dir: str | Path | None = None) -> list[str]:
    prompts = [format_prompt(r) for r in records]  # by the record's dataset, else its domain
    if shots == 0:
        return prompts
    pool = list(shot_records) if shot_records is not None else _shot_pool(spec, shots, data_dir)
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

    ``task``: ``"sst2"``, ``"sst5"``, ``"sst5_binary"``, ``"yelp"``, ``"cr"``, ``"mmlu"`` (or
    ``"mmlu:<subject|category>"``), ``"gsm8k"``, ``"math"``, ``"arithmetic"`` (see
    :mod:`moelens.tasks.registry`). ``data``: a JSONL path or folder, or a list of records in the
    ``../shared/data`` format; by default the task's ``split`` (its evaluation split) from the
    data folder, else the hub; a folder with one ``.jsonl`` file reads it. Every record is checked
    first (:func:`~moelens.tasks.records.check_records`, as the CLI's ``--data``): a string ``text``,
    the task's gold field, and no record of another dataset or domain (an MMLU question is not
    scored as sst2). Settings are checked before any model work. ``limit``: that many records, evenly spaced. ``shots``: few-shot
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
    _check_settings(batch_size, shots, max_length, seed, shot_records, spec)  # before any data or model work
    items = interventions if isinstance(interventions, (list, tuple)) else ([interventions] if interventions is not None else [])
    for item in items if callable(getattr(model, "run_with_interventions", None)) else ():  # a bare HF model: refused later
        if not callable(getattr(item, "hooks", None)) and not (isinstance(item, tuple) and len(item) == 2):
            raise InvalidInputError(f"interventions item {item!r} is neither an intervention (Perturb, Scale, Ablate, Force, Patch) "
                                    "nor a (hook name, fn) pair.")
    records = resolve_records(spec, data, split, limit, data_dir)
    prompts = _prompts(spec, records, shots, shot_records, seed, data_dir)
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

