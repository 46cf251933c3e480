"""Checks of command-line inputs before any work starts: each bad value becomes an
:class:`~moelens.errors.InvalidInputError` naming it and the fix (the CLI prints it as one line, exit 2)."""

from __future__ import annotations

import os
from pathlib import Path

from ._checks import check_device  # re-exported: the CLI and the model import it from here
from .errors import InvalidInputError

__all__ = ["check_device", "check_data_specs", "check_study_args", "check_model_name", "check_out_dir", "checked_domain_texts"]


def check_model_name(name: str | None) -> None:
    """``--model ''`` is a mistake, not the default.

    >>> check_model_name("")
    Traceback (most recent call last):
    ...
    moelens.errors.InvalidInputError: --model '' is empty; leave --model out for the default model, or name one.
    """
    if name is not None and not name.strip():
        raise InvalidInputError(f"--model {name!r} is empty; leave --model out for the default model, or name one.")


def check_data_specs(specs: list[str] | None) -> None:
    """Each domain once: two ``--data`` flags for one domain would silently keep only the last.

    >>> check_data_specs(["a=x.jsonl", "a=y.jsonl"])
    Traceback (most recent call last):
    ...
    moelens.errors.InvalidInputError: --data gives domain 'a' twice ('a=x.jsonl', 'a=y.jsonl'); give each domain once.
    """
    seen: dict[str, str] = {}
    for spec in specs or []:
        domain = spec.partition("=")[0] if "=" in spec else spec
        if domain in seen:
            raise InvalidInputError(f"--data gives domain {domain!r} twice ({seen[domain]!r}, {spec!r}); give each domain once.")
        seen[domain] = spec


def check_out_dir(out: Path) -> None:
    """``--out`` must be a folder moelens can create and write into.

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile() as f:
    ...     check_out_dir(Path(f.name))
    Traceback (most recent call last):
    ...
    moelens.errors.InvalidInputError: --out ... is a file, not a folder; pass a folder path (it is created if missing).
    """
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out {out} is a file, not a folder; pass a folder path (it is created if missing).")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InvalidInputError(f"--out {out} cannot be created ({error.strerror}); pass a folder you can write to.") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise InvalidInputError(f"--out {out} is not writable; pass a folder you can write to.")


def checked_domain_texts(spec: str, source: str, limit: int | None) -> list[str]:
    """The prompts of ``source`` (a JSONL path or dataset name) after checking every record: a JSON
    object with a string ``text`` (and a list ``choices`` for MMLU-style records)."""
    from .tasks.data import format_prompt, load_records
    from .tasks.records import check_records

    records = load_records(source, limit=limit)
    check_records(records, f"--data {spec!r}")  # the same checker as evaluate(data=...)
    for number, record in enumerate(records, 1):
        try:
            format_prompt(record)
        except (KeyError, TypeError, AttributeError) as error:
            raise InvalidInputError(f"--data {spec!r}: record {number} cannot be formatted as a prompt ({type(error).__name__}: {error}); "
                                    "check its fields.") from None
    return [format_prompt(record) for record in records]


def check_study_args(task: str, select_on: str | None, evaluate_on: str | None, factors: list[float] | None, recipes: list[str] | None,
                     **counts: int | None) -> None:
    """The study command's arguments, before the model loads: task, recipes, factors, counts, and the
    records of JSONL files given as ``--select-on``/``--evaluate-on``.

    >>> check_study_args("sst2", None, None, [float("nan")], None, n_random=3)
    Traceback (most recent call last):
    ...
    moelens.errors.InvalidInputError: --factor nan must be a finite number > 0 (0.8 down-weights, 1.2 up-weights).
    """
    from ._checks import check_count
    from .tasks.evaluate import resolve_records
    from .tasks.registry import get_task
    from .tasks.study.recipes import RECIPES

    spec = get_task(task)
    for factor in factors or ():
        if not factor == factor or factor in (float("inf"), float("-inf")) or factor <= 0:
            raise InvalidInputError(f"--factor {factor} must be a finite number > 0 (0.8 down-weights, 1.2 up-weights).")
    for recipe in recipes or ():
        if recipe not in RECIPES:
            raise InvalidInputError(f"--recipe {recipe!r} is not one of {', '.join(RECIPES)}.")
    for name, value in counts.items():
        minimum = 0 if name in ("n_random", "tune_steps", "seed") else 1
        try:
            check_count(name, value, minimum, optional=name == "limit")
        except InvalidInputError:
            raise InvalidInputError(f"--{name.replace('_', '-')} {value} must be an int >= {minimum}.") from None
    for flag, source in (("--select-on", select_on), ("--evaluate-on", evaluate_on)):
        if source is not None and ("/" in source or source.endswith(".jsonl") or Path(source).exists()):
            if not Path(source).exists():
                raise InvalidInputError(f"{flag} {source}: no such file or folder; pass a JSONL path or a split name (train, validation[:200]).")
            resolve_records(spec, source)  # reads and checks every record now, not after the model loaded
    from .tasks.evaluate import split_or_records
    from .tasks.records import check_disjoint

    select = split_or_records(spec, select_on, spec.select_split, counts.get("select_limit"), None)[0]
    check_disjoint(select, split_or_records(spec, evaluate_on, spec.eval_split, counts.get("limit"), None)[0])
