"""Prompt formats: the one place where moelens (and the zoo's training script) writes prompts.

A completion is expected right after the final colon, with a leading space:

- sentiment (sst2, sst5, yelp): ``"Review: {text}\\nSentiment:"``, label words `` negative`` /
  `` positive`` (SST-5 5-way: `` very negative`` ... `` very positive``);
- mmlu: ``"Question: {text}\\nA. {c0}\\nB. {c1}\\nC. {c2}\\nD. {c3}\\nAnswer:"``, target the letter;
- math (gsm8k, math, arithmetic): ``"Question: {text}\\nAnswer:"``, target the short ``answer``.

Few-shot prompts join solved examples (prompt + target) with blank lines before the question.

>>> format_prompt({"text": "a gem .", "domain": "sentiment"})
'Review: a gem .\\nSentiment:'
>>> format_prompt({"text": "a gem .", "dataset": "imdb", "domain": "sentiment"})  # unknown name: its domain
'Review: a gem .\\nSentiment:'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..errors import InvalidInputError

__all__ = [
    "MMLU_LETTERS",
    "SENTIMENT_LABEL_WORDS",
    "SST5_LABEL_WORDS",
    "few_shot_prompt",
    "format_math",
    "format_mmlu",
    "format_prompt",
    "format_sentiment",
    "format_target",
    "math_prompt",
    "mmlu_prompt",
    "prompt_kind",
    "sentiment_prompt",
    "sst5_to_binary",
]

SENTIMENT_LABEL_WORDS = (" negative", " positive")  # index = binary label
SST5_LABEL_WORDS = (" very negative", " negative", " neutral", " positive", " very positive")
MMLU_LETTERS = ("A", "B", "C", "D")

# Prompt family per dataset name and per ``domain`` field value.
_KINDS = {"sst2": "sentiment", "sst5": "sentiment", "yelp": "sentiment", "cr": "sentiment", "sentiment": "sentiment",
          "mmlu": "mmlu", "gsm8k": "math", "math": "math", "arithmetic": "math"}


def sentiment_prompt(text: str) -> str:
    """``"Review: {text}\\nSentiment:"``.

    >>> sentiment_prompt("fine .")
    'Review: fine .\\nSentiment:'
    """
    return f"Review: {text}\nSentiment:"


def format_sentiment(text: str, label: int) -> str:
    """A solved binary sentiment example (prompt + label word)."""
    return sentiment_prompt(text) + SENTIMENT_LABEL_WORDS[int(label)]


def sst5_to_binary(label: int) -> int | None:
    """SST-5 fine label -> binary label (0 negative, 1 positive); neutral (2) -> None (dropped).

    >>> [sst5_to_binary(x) for x in range(5)]
    [0, 0, None, 1, 1]
    """
    label = int(label)
    if label in (0, 1):
        return 0
    if label in (3, 4):
        return 1
    return None


def mmlu_prompt(question: str, choices: Sequence[str]) -> str:
    """Question, lettered choices, ``Answer:``."""
    if not 1 <= len(choices) <= 26:
        raise InvalidInputError(f"an MMLU-style question needs 1 to 26 choices; got {len(choices)}.")
    lines = [f"Question: {question}"]
    lines += [f"{chr(ord('A') + i)}. {c}" for i, c in enumerate(choices)]
    return "\n".join(lines) + "\nAnswer:"


def format_mmlu(question: str, choices: Sequence[str], letter: str) -> str:
    """A solved multiple-choice example (prompt + `` letter``)."""
    return mmlu_prompt(question, choices) + " " + letter


def math_prompt(question: str) -> str:
    """``"Question: {question}\\nAnswer:"``."""
    return f"Question: {question}\nAnswer:"


def format_math(question: str, answer: str) -> str:
    """A solved free-answer example (prompt + `` answer``)."""
    return math_prompt(question) + " " + str(answer).strip()


def prompt_kind(record: Mapping, task: str | None = None) -> str:
    """``"sentiment"``, ``"mmlu"`` or ``"math"``: from ``task``, else the record's ``dataset``, else
    its ``domain`` (so a new sentiment set with ``domain="sentiment"`` needs no registration).

    >>> prompt_kind({"dataset": "imdb", "domain": "sentiment"})
    'sentiment'
    """
    if task is not None:
        key = task.split(":", 1)[0].removesuffix("_binary")
        if key not in _KINDS:
            raise InvalidInputError(f"unknown task {task!r}: pass task= one of {sorted(_KINDS)} (a dataset name or a domain).")
        return _KINDS[key]
    for key in (record.get("dataset"), record.get("domain")):
        if key in _KINDS:
            return _KINDS[key]
    raise InvalidInputError(
        f"unknown task for record {record.get('id', '?')!r} (dataset {record.get('dataset')!r}, domain "
        f"{record.get('domain')!r}): pass task= one of {sorted(_KINDS)} (a dataset name or a domain)."
    )


def format_prompt(record: Mapping, task: str | None = None) -> str:
    """The prompt for one record (formats in the module docstring).

    ``task`` is a dataset name or a domain (sentiment, mmlu, math); by default the record's
    ``dataset``, else its ``domain`` field.

    >>> print(format_prompt({"text": "2+2?", "choices": ["3", "4"], "domain": "mmlu"}))
    Question: 2+2?
    A. 3
    B. 4
    Answer:
    >>> format_prompt({"text": "What is 6*7?"}, task="gsm8k")
    'Question: What is 6*7?\\nAnswer:'
    """
    kind, text = prompt_kind(record, task), record["text"].strip()
    if kind == "sentiment":
        return sentiment_prompt(text)
    if kind == "mmlu":
        return mmlu_prompt(text, [str(c).strip() for c in record["choices"]])
    return math_prompt(text)


def format_target(record: Mapping, task: str | None = None) -> str:
    """The gold completion (no leading space): ``label_text``, the choice letter, or ``answer``.

    >>> format_target({"label": 1, "choices": ["3", "4"], "domain": "mmlu"})
    'B'
    """
    kind = prompt_kind(record, task)
    if kind == "sentiment":
        return str(record["label_text"])
    if kind == "mmlu":
        return record.get("answer") or chr(ord("A") + int(record["label"]))
    return str(record["answer"])


def few_shot_prompt(prompt: str, shots: Sequence[tuple[str, str]]) -> str:
    """``prompt`` preceded by solved examples ``(prompt, target)``, one blank line apart.

    >>> few_shot_prompt("Q: b\\nA:", [("Q: a\\nA:", "1")])
    'Q: a\\nA: 1\\n\\nQ: b\\nA:'
    """
    solved = [f"{shot_prompt} {str(target).strip()}" for shot_prompt, target in shots]
    return "\n\n".join([*solved, prompt])
