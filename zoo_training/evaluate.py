"""The zoo training script's evaluation helpers: a thin shim over :mod:`moelens.tasks`.

Prompts and scoring live in ``moelens.tasks`` (``prompts``, ``scoring``); these names keep the
signatures the training script uses: a bare HF model (or a HookedMoE) and its tokenizer, dicts of
aggregates. For interventions, per-example predictions and paired statistics use
:func:`moelens.evaluate`.

>>> sentiment_prompt("fine .") + SENTIMENT_LABEL_WORDS[1]
'Review: fine .\\nSentiment: positive'
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch

from moelens.tasks import scoring
from moelens.tasks.prompts import (
    MMLU_LETTERS,
    SENTIMENT_LABEL_WORDS,
    format_math,
    format_mmlu,
    format_sentiment,
    math_prompt,
    mmlu_prompt,
    sentiment_prompt,
    sst5_to_binary,
)
from moelens.tasks.scoring import wilson_ci

__all__ = [
    "MMLU_LETTERS",
    "SENTIMENT_LABEL_WORDS",
    "choice_logprobs",
    "exact_match_accuracy",
    "format_math",
    "format_mmlu",
    "format_sentiment",
    "greedy_answers",
    "math_prompt",
    "mmlu_accuracy",
    "mmlu_prompt",
    "sentiment_accuracy",
    "sentiment_prompt",
    "sst5_to_binary",
    "wilson_ci",
]


@contextmanager
def _eval_mode(model):
    """Score in eval mode (routers add noise in training) and restore the caller's mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def choice_logprobs(model, tokenizer, prompts: Sequence[str], continuations: Sequence[str],
                    batch_size: int = 32, max_length: int | None = 256) -> torch.Tensor:
    """Summed log-prob of each continuation after each prompt: ``[len(prompts), len(continuations)]``."""
    with _eval_mode(model):
        return scoring.choice_logprobs(model, prompts, continuations, tokenizer=tokenizer,
                                       batch_size=batch_size, max_length=max_length)


def _aggregate(correct: torch.Tensor) -> dict:
    n, hits = len(correct), int(correct.sum())
    lo, hi = wilson_ci(hits, n)
    return {"accuracy": hits / max(1, n), "correct": hits, "n": n, "ci95": [lo, hi]}


def sentiment_accuracy(model, tokenizer, texts: Sequence[str], labels: Sequence[int], batch_size: int = 32) -> dict:
    """Binary sentiment accuracy (argmax of logprob of " negative" vs " positive") + Wilson 95% CI."""
    lp = choice_logprobs(model, tokenizer, [sentiment_prompt(t) for t in texts], list(SENTIMENT_LABEL_WORDS), batch_size)
    pred = lp.argmax(-1)
    result = _aggregate(pred == torch.tensor([int(x) for x in labels]))
    return {**result, "frac_pred_positive": float(pred.float().mean())}


def mmlu_accuracy(model, tokenizer, rows: Sequence[dict], batch_size: int = 16) -> dict:
    """MMLU accuracy: argmax over the logprob of " A".." D" after "Answer:"."""
    prompts = [mmlu_prompt(r["text"], r["choices"]) for r in rows]
    lp = choice_logprobs(model, tokenizer, prompts, [" " + x for x in MMLU_LETTERS], batch_size)
    return _aggregate(lp.argmax(-1) == torch.tensor([int(r["label"]) for r in rows]))


def greedy_answers(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 8, batch_size: int = 64) -> list[str]:
    """Greedy continuation (no cache, right padding) up to newline / EOS; returns stripped strings."""
    with _eval_mode(model):
        return scoring.greedy_generate(model, prompts, tokenizer=tokenizer, max_new_tokens=max_new_tokens,
                                       batch_size=batch_size, max_length=None)


def exact_match_accuracy(model, tokenizer, questions: Sequence[str], answers: Sequence[str], max_new_tokens: int = 8) -> dict:
    """Exact string match of the greedy answer to ``answer`` (the zoo card's metric)."""
    preds = greedy_answers(model, tokenizer, [math_prompt(q) for q in questions], max_new_tokens)
    result = _aggregate(torch.tensor([p == str(a).strip() for p, a in zip(preds, answers)]))
    return {**result, "examples": [[q, a, p] for q, a, p in list(zip(questions, answers, preds))[:5]]}
