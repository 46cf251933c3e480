"""Evaluation tasks: what to score, how, and on which split.

| task | kind | scored | evaluate on | select on |
|---|---|---|---|---|
| sst2 | choice | `` negative`` / `` positive`` | validation | train |
| sst5 | choice | 5 label words (`` very negative`` ...) | validation | train |
| sst5_binary | choice | 2 label words, neutral dropped | validation | train |
| yelp | choice | `` negative`` / `` positive`` | validation | train (hub) |
| cr | choice | `` negative`` / `` positive`` (customer reviews) | test (hub) | train (hub) |
| mmlu, mmlu:NAME | choice | `` A`` .. `` D``; NAME a subject, subcategory or category | test | validation |
| gsm8k | generate | the number (after ``####``, else the last) | test | train |
| math | generate | ``\\boxed{}``, else the first line | test[4000:] | test[:4000] |
| arithmetic | generate | the number | test | train |

``math`` splits follow the zoo: its models trained on MATH test items ``[0, 4000)``. ``arithmetic``
is the zoo's synthetic task ("What is a + b?"), regenerated here with the zoo's rule (a fixed 10%
of the (op, a, b) triples is held out: that is the ``test`` split). Few-shot examples come from
``shot_split``, never from the split being evaluated.

>>> get_task("mmlu:STEM").keep({"category": "STEM", "subject": "anatomy"})
True
>>> get_task("sst5_binary").gold({"label": 4})
1
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from .answers import (
    extract_math_answer,
    extract_number,
    math_answers_match,
    numbers_match,
)
from .prompts import (
    MMLU_LETTERS,
    SENTIMENT_LABEL_WORDS,
    SST5_LABEL_WORDS,
    sst5_to_binary,
)

__all__ = ["TASKS", "Task", "arithmetic_problems", "get_task", "sample_arithmetic", "task_records"]

Record = dict[str, Any]


@dataclass(frozen=True)
class Task:
    """One evaluation task (see the module table)."""

    name: str
    dataset: str  # the data folder / DATASETS name its records come from
    kind: str  # "choice" (log-likelihood of each choice) | "generate" (greedy, then extract)
    eval_split: str
    select_split: str
    shot_split: str
    choices: tuple[str, ...] = ()  # continuations scored, for choice tasks
    gold: Callable[[Mapping], Any] = field(default=lambda r: int(r["label"]))
    keep: Callable[[Mapping], bool] = field(default=lambda r: True)
    extract: Callable[[str], str | None] = field(default=lambda text: text)
    match: Callable[[str | None, str], bool] = field(default=lambda p, g: p == g)
    target: Callable[[Mapping], str] = field(default=lambda r: str(r["answer"]))  # few-shot/LoRA completion
    max_new_tokens: int = 8

    def label_target(self, record: Mapping) -> str:
        """The gold completion with its leading space (choice tasks: the gold choice)."""
        if self.kind == "choice":
            return self.choices[self.gold(record)]
        return " " + self.target(record).strip()


def _sentiment(name: str, dataset: str, words: Sequence[str], gold=None, keep=None, select="train") -> Task:
    return Task(name, dataset, "choice", "validation", select, select, tuple(words),
                gold=gold or (lambda r: int(r["label"])), keep=keep or (lambda r: True))


def _subset_filter(subset: str) -> Callable[[Mapping], bool]:
    return lambda r: subset in (r.get("subject"), r.get("subcategory"), r.get("category"))


def _mmlu(subset: str | None = None) -> Task:
    name = "mmlu" if subset is None else f"mmlu:{subset}"
    keep = _subset_filter(subset) if subset else (lambda r: True)
    return Task(name, "mmlu", "choice", "test", "validation", "dev", tuple(" " + x for x in MMLU_LETTERS),
                gold=lambda r: int(r["label"]), keep=keep)


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        _sentiment("sst2", "sst2", SENTIMENT_LABEL_WORDS),
        _sentiment("sst5", "sst5", SST5_LABEL_WORDS),
        _sentiment("sst5_binary", "sst5", SENTIMENT_LABEL_WORDS, gold=lambda r: sst5_to_binary(r["label"]),
                   keep=lambda r: sst5_to_binary(r["label"]) is not None),
        _sentiment("yelp", "yelp", SENTIMENT_LABEL_WORDS),
        Task("cr", "cr", "choice", "test", "train", "train", tuple(SENTIMENT_LABEL_WORDS)),
        _mmlu(),
        Task("gsm8k", "gsm8k", "generate", "test", "train", "train", gold=lambda r: str(r["answer"]),
             extract=extract_number, match=numbers_match, max_new_tokens=12),
        Task("math", "math", "generate", "test[4000:]", "test[:4000]", "test[:4000]",
             gold=lambda r: str(r["answer"]), extract=extract_math_answer, match=math_answers_match, max_new_tokens=16),
        Task("arithmetic", "arithmetic", "generate", "test", "train", "train", gold=lambda r: str(r["answer"]),
             extract=extract_number, match=numbers_match, max_new_tokens=6),
    )
}


def get_task(task: str | Task) -> Task:
    """A task by name (``"mmlu:<subject|subcategory|category>"`` for part of MMLU), or the Task itself."""
    if isinstance(task, Task):
        return task
    if not isinstance(task, str):
        raise InvalidInputError(f"task must be a task name ({sorted(TASKS)}) or a Task; got {type(task).__name__}.")
    if task.startswith("mmlu:") and len(task) > 5:
        return _mmlu(task[5:])
    if task not in TASKS:
        raise InvalidInputError(f"unknown task {task!r}; tasks: {sorted(TASKS)} (and mmlu:<subject or category>).")
    return TASKS[task]


def arithmetic_problems(rng: random.Random, n: int, heldout: bool) -> list[tuple[str, str]]:
    """The zoo's synthetic "What is a + b?" problems; a deterministic 10% of (op, a, b) triples is
    held out (the same rule as ``zoo_training/train.py``, which trained on the rest).

    >>> arithmetic_problems(random.Random(0), 2, heldout=True)
    [('What is 8 - 1?', '7'), ('What is 64 - 27?', '37')]
    """
    return sample_arithmetic(rng, n, lambda a, b, op: ((a * 7 + b * 13 + (op == "-")) % 10 == 0) == heldout)


def sample_arithmetic(rng: random.Random, n: int, accept: Callable[[int, int, str], bool]) -> list[tuple[str, str]]:
    """``n`` problems "What is a + b?" / "a - b" (operands < 10, 20 or 100, no negative results)
    drawn from ``rng`` in order, keeping those ``accept(a, b, op)`` admits: the one sampler of the
    held-out rules here and of the zoo's training splits (``zoo_training.data``).

    >>> sample_arithmetic(random.Random(0), 2, lambda a, b, op: op == "+")
    [('What is 4 + 3?', '7'), ('What is 3 + 2?', '5')]
    """
    out = []
    while len(out) < n:
        op = rng.choice("+-")
        hi = rng.choice([10, 20, 100])
        a, b = rng.randrange(hi), rng.randrange(hi)
        if op == "-" and b > a:
            a, b = b, a
        if accept(a, b, op):
            out.append((f"What is {a} {op} {b}?", str(a + b if op == "+" else a - b)))
    return out


# The zoo's evaluation draws 300 held-out problems with Random(seed + 2), seed 0.
_ARITHMETIC = {"test": (2, 300, True), "train": (0, 2000, False)}


def _arithmetic_records(split: str) -> list[Record]:
    if split not in _ARITHMETIC:
        raise InvalidInputError(f"arithmetic has splits {sorted(_ARITHMETIC)}; got {split!r}.")
    seed, n, heldout = _ARITHMETIC[split]
    return [
        {"id": f"arithmetic-{split}-{i}", "dataset": "arithmetic", "domain": "math", "split": split, "text": q, "answer": a}
        for i, (q, a) in enumerate(arithmetic_problems(random.Random(seed), n, heldout))
    ]


_SLICE = re.compile(r"^(?P<split>[\w-]+)\[(?P<start>-?\d*):(?P<stop>-?\d*)\]$")


def task_records(task: str | Task, split: str | None = None, data_dir: str | Path | None = None) -> list[Record]:
    """The records of a task's split (default: its evaluation split), filtered by the task.

    ``split`` may slice: ``"test[4000:]"``, ``"validation[:200]"``.
    """
    from .data import load_records

    spec = get_task(task)
    split = split or spec.eval_split
    match = _SLICE.match(split)
    base, part = (match["split"], slice(int(match["start"] or 0), int(match["stop"]) if match["stop"] else None)) if match else (split, slice(None))
    if spec.dataset == "arithmetic":
        records = _arithmetic_records(base)
    else:
        records = load_records(spec.dataset, base, data_dir=data_dir)
    return [r for r in records[part] if spec.keep(r)]
