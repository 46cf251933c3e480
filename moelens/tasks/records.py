"""The one record checker behind ``evaluate(data=...)``, the study's ``select_on``/``evaluate_on`` and the
CLI's ``--data``: every record is a JSON object with a string ``text``; MMLU questions carry a
``choices`` list; and with a task, a record of another dataset or domain is refused (an MMLU
question scored as sst2 would otherwise give a silent, meaningless accuracy), as is a record without
the task's gold field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InvalidInputError

__all__ = ["check_disjoint", "check_records", "task_domain"]


def task_domain(dataset: str) -> str | None:
    """The domain (sentiment | mmlu | math) of a dataset name, None if unknown.

    >>> task_domain("sst5"), task_domain("arithmetic"), task_domain("nope")
    ('sentiment', 'math', None)
    """
    from .data import DATASETS

    if dataset == "arithmetic":
        return "math"
    spec = DATASETS.get(dataset)
    return spec.domain if spec is not None else None


def _mismatch(record: Mapping, task: Any) -> str | None:
    """Why ``record`` belongs to another task than ``task``, or None."""
    dataset, domain = record.get("dataset"), record.get("domain")
    if isinstance(dataset, str) and dataset != task.dataset:  # also datasets moelens does not know (a CR file as yelp)
        return f"is a {dataset!r} record"
    want = task_domain(task.dataset)
    if isinstance(domain, str) and want is not None and domain != want:
        return f"is a {domain!r}-domain record"
    return None


def check_records(records: Sequence[Any], where: str, task: Any = None) -> None:
    """Refuse the first bad record of ``records`` (read from ``where``), naming it and the fix.

    ``task``: a :class:`~moelens.tasks.registry.Task`; records of another dataset or domain, and
    records the task cannot score (no gold label or answer), are refused.

    >>> from moelens.tasks.registry import get_task
    >>> check_records([{"text": None}], "data")
    Traceback (most recent call last):
    ...
    moelens.errors.InvalidInputError: data: record 1 has 'text' that is None; each record needs a string 'text' field.
    >>> check_records([{"text": "2+2?", "dataset": "gsm8k", "answer": "4"}], "data", get_task("sst2"))
    Traceback (most recent call last):
    ...
    moelens.errors.InvalidInputError: data: record 1 is a 'gsm8k' record, but task 'sst2' scores 'sst2' records; pass data of that task, or evaluate task 'gsm8k'.
    """
    for number, record in enumerate(records, 1):
        at = f"{where}: record {number}"
        if not isinstance(record, Mapping):
            kind = {list: "list", str: "string"}.get(type(record), type(record).__name__)
            raise InvalidInputError(f"{at} is a JSON {kind}, not an object ({str(record)[:40]}); "
                                    "write one {\"text\": ...} object per line (a dict per record).")
        if not isinstance(record.get("text"), str):
            got = "no 'text' field" if "text" not in record else f"'text' that is {_kind(record['text'])}"
            raise InvalidInputError(f"{at} has {got}; each record needs a string 'text' field.")
        is_mmlu = "mmlu" in (record.get("dataset"), record.get("domain"))
        if is_mmlu and not isinstance(record.get("choices"), list):
            raise InvalidInputError(f"{at} is an MMLU question without a 'choices' list; add the answer choices.")
        if task is None:
            continue
        why = _mismatch(record, task)
        if why is not None:
            other = record.get("dataset") or record.get("domain")
            fix = f"evaluate task {other!r}" if task_domain(str(other)) is not None else "remove its 'dataset' field if it is one"
            raise InvalidInputError(f"{at} {why}, but task {task.name!r} scores {task.dataset!r} records; "
                                    f"pass data of that task, or {fix}.")
        try:
            task.gold(record)
        except (KeyError, TypeError, ValueError, IndexError) as error:
            field = "'label'" if task.kind == "choice" else "'answer'"
            raise InvalidInputError(f"{at} has no usable gold {field} for task {task.name!r} "
                                    f"({type(error).__name__}: {error}); add it to every record.") from None


def _kind(value: Any) -> str:
    name = type(value).__name__
    return "None" if value is None else f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _normal_text(text: str) -> str:
    return re.sub(r"\s+", " ", str(text)).strip().lower()


def check_disjoint(select: Sequence[Mapping], evaluate_on: Sequence[Mapping], names: tuple[str, str] = ("selection", "evaluation")) -> None:
    """Raise :class:`~moelens.InvalidInputError` if two record lists share an id or a text.

    >>> check_disjoint([{"id": "a", "text": "x"}], [{"id": "b", "text": "X "}])
    Traceback (most recent call last):
    ...
    moelens.errors.InvalidInputError: the selection and evaluation data share 1 text(s) (e.g. 'x'); ...
    """
    shared_ids = {str(r["id"]) for r in select} & {str(r["id"]) for r in evaluate_on}
    if shared_ids:
        raise InvalidInputError(f"the {names[0]} and {names[1]} data share {len(shared_ids)} id(s) (e.g. {min(shared_ids)!r}); "
                                "use disjoint splits (select, develop and confirm on different records).")
    shared = {_normal_text(r["text"]) for r in select} & {_normal_text(r["text"]) for r in evaluate_on}
    if shared:
        raise InvalidInputError(f"the {names[0]} and {names[1]} data share {len(shared)} text(s) (e.g. {min(shared)[:60]!r}); "
                                "drop them from one side: reusing examples across stages inflates the effect.")
