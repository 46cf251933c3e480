"""Scoring as lm-eval-harness does it for base models, and the statistics of a score.

- :func:`choice_logprobs`: summed log-probability of each continuation (label word, choice
  letter) after each prompt; the prediction is the argmax.
- :func:`greedy_generate`: greedy continuation up to a newline or EOS, for free answers.

Both take any backend of :class:`~moelens.backends.protocol.MoEBackend` and make one call per
batch: ``model(ids, attention_mask=...)``, or ``model.run_with_interventions(ids, interventions,
...)`` when given interventions (a :class:`~moelens.HookedMoE` forward, or one ``NNsightMoE``
trace; with a HookedMoE an enclosing ``with model.intervene(...)`` applies too). Only the logits
of the positions that predict a continuation or the next token are kept: through the backend's
``logits_at`` where it has one (``NNsightMoE``, selecting inside the trace), else sliced. A bare
HF causal LM (the zoo's training loop) works without interventions.
Prompts are tokenized one by one (with the tokenizer's special tokens), truncated from the left
to ``max_length`` and right-padded; continuations are tokenized without special tokens.

>>> wilson_ci(8, 10)
(0.4901624..., 0.9433178...)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..errors import InvalidInputError
from ..stats import bootstrap_ci, mcnemar_p, paired_bootstrap, wilson_ci  # re-exported: the old home

__all__ = [
    "accuracy",
    "bootstrap_ci",
    "choice_logprobs",
    "greedy_generate",
    "mcnemar_p",
    "paired_bootstrap",
    "weighted_f1",
    "wilson_ci",
]



# ---------------------------------------------------------------------- running the model
def _forward(model: Any, interventions: Any) -> Callable[[Tensor, Tensor], Tensor]:
    """``fn(ids, mask) -> logits`` for any backend of :class:`~moelens.backends.protocol.MoEBackend`
    (``HookedMoE``, ``NNsightMoE``: one call per batch, the interventions riding along), or for a
    bare HF causal LM (no interventions)."""
    from ..backends.protocol import MoEBackend

    if isinstance(model, MoEBackend):
        if interventions:
            return lambda ids, mask: model.run_with_interventions(ids, interventions, attention_mask=mask)
        return lambda ids, mask: model(ids, attention_mask=mask)
    if interventions:
        raise InvalidInputError("interventions need a moelens backend; wrap the model with HookedMoE.from_hf(model, tokenizer) "
                                "or NNsightMoE.from_hf(model, tokenizer).")
    return lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits


def _logits_at(model: Any, interventions: Any) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """``fn(ids, mask, positions) -> logits [batch k d_vocab]`` at ``positions`` ``[batch k]``: the
    backend's own ``logits_at`` where it has one (``NNsightMoE`` selects inside the trace, so a
    remote run sends back k positions per row, not the sequence), else a slice of the full logits."""
    at = getattr(model, "logits_at", None)
    if callable(at):
        return lambda ids, mask, positions: at(ids, positions, interventions or None, attention_mask=mask)
    forward = _forward(model, interventions)

    def sliced(ids: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        logits = forward(ids, mask)  # [batch pos d_vocab]
        return logits[torch.arange(len(ids), device=logits.device).unsqueeze(1), positions.to(logits.device)]

    return sliced


def _tokenizer(model: Any, tokenizer: Any) -> Any:
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise InvalidInputError("scoring texts needs a tokenizer: pass tokenizer=, or load the model with one.")
    return tokenizer


def _device(model: Any) -> torch.device:
    """Where inputs go: the backend's (or HF model's) ``device``, else the first parameter's."""
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device


def pad_rows(sequences: Sequence[list[int]], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Right-padded ids and mask ``[batch pos]``.

    >>> ids, mask = pad_rows([[5, 6], [7]], 0, torch.device("cpu"))
    >>> ids.tolist(), mask.tolist()
    ([[5, 6], [7, 0]], [[1, 1], [1, 0]])
    """
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def encode_prompts(tokenizer: Any, prompts: Sequence[str], max_length: int | None) -> list[list[int]]:
    """Token ids of each prompt (with special tokens), keeping the last ``max_length`` ids.

    >>> encode_prompts(lambda text, add_special_tokens: {"input_ids": [1, *map(ord, text)]}, ["ab"], 2)
    [[97, 98]]
    """
    encoded = [list(tokenizer(p, add_special_tokens=True)["input_ids"]) for p in prompts]
    return [e[-max_length:] if max_length else e for e in encoded]  # keep the end: the question and "Answer:"


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f"batch_size={batch_size!r} must be an int >= 1.")


@torch.no_grad()
def choice_logprobs(
    model: Any,
    prompts: Sequence[str],
    continuations: Sequence[str],
    *,
    tokenizer: Any = None,
    interventions: Any = None,
    batch_size: int = 32,
    max_length: int | None = 256,
    progress: bool = False,
) -> Tensor:
    """Summed log-probability of each continuation after each prompt: ``[len(prompts), len(continuations)]``.

    Continuations of one token each take one forward per batch (the last prompt position); longer
    ones one forward per (prompt, continuation) pair, batched.

    >>> from moelens import HookedMoE
    >>> from moelens.testing import tiny_model
    >>> from transformers import AutoTokenizer
    >>> from moelens.zoo import ZOO_DIR
    >>> model = HookedMoE.from_hf(tiny_model("mixtral", vocab_size=4096), AutoTokenizer.from_pretrained(ZOO_DIR / "tokenizer"))
    >>> choice_logprobs(model, ["Review: fine .\\nSentiment:"], [" negative", " positive"]).shape
    torch.Size([1, 2])
    """
    _check_batch_size(batch_size)
    tokenizer = _tokenizer(model, tokenizer)
    if not continuations:
        raise InvalidInputError("continuations is empty; pass the label words or choices to score.")
    logits_at = _logits_at(model, interventions)
    device, pad = _device(model), tokenizer.pad_token_id or 0
    cont_ids = [list(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in continuations]
    if any(not c for c in cont_ids):
        raise InvalidInputError(f"a continuation tokenizes to nothing: {[c for c, i in zip(continuations, cont_ids, strict=True) if not i]}.")
    prompt_ids = encode_prompts(tokenizer, prompts, max_length)
    out = torch.empty(len(prompts), len(continuations))
    single = all(len(c) == 1 for c in cont_ids)
    # One item per forward row: a prompt (single-token continuations) or a (prompt, continuation) pair.
    items = [(i, None) for i in range(len(prompts))] if single else [
        (i, j) for i in range(len(prompts)) for j in range(len(cont_ids))]
    items.sort(key=lambda item: len(prompt_ids[item[0]]))  # similar lengths share a batch: less padding
    for start in tqdm(range(0, len(items), batch_size), desc="scoring", unit="batch", disable=not progress):
        chunk = items[start : start + batch_size]
        seqs = [prompt_ids[i] + (cont_ids[j] if j is not None else []) for i, j in chunk]
        ids, mask = pad_rows(seqs, pad, device)
        if single:  # the last prompt position predicts the continuation
            positions = torch.tensor([[len(s) - 1] for s in seqs])
        else:  # the positions predicting each continuation's tokens, right-padded with its last one
            width = max(len(cont_ids[j]) for _, j in chunk)
            positions = torch.tensor([[len(s) - len(cont_ids[j]) - 1 + min(t, len(cont_ids[j]) - 1) for t in range(width)]
                                      for s, (_, j) in zip(seqs, chunk, strict=True)])
        logp = torch.log_softmax(logits_at(ids, mask, positions).float(), dim=-1).cpu()  # [batch k d_vocab]
        if single:
            out[[i for i, _ in chunk]] = logp[:, 0, [c[0] for c in cont_ids]]
            continue
        for row, (i, j) in enumerate(chunk):
            c = cont_ids[j]
            out[i, j] = logp[row, torch.arange(len(c)), torch.tensor(c)].sum()
    return out


@torch.no_grad()
def greedy_generate(
    model: Any,
    prompts: Sequence[str],
    *,
    tokenizer: Any = None,
    interventions: Any = None,
    max_new_tokens: int = 8,
    batch_size: int = 32,
    max_length: int | None = 256,
    stop_at_newline: bool = True,
    progress: bool = False,
) -> list[str]:
    """Greedy continuations (no KV cache: each step reruns the prompt, so every hook sees the whole
    sequence), stopped at EOS or (by default) a newline; returned stripped."""
    _check_batch_size(batch_size)
    tokenizer = _tokenizer(model, tokenizer)
    logits_at = _logits_at(model, interventions)
    device, pad, eos = _device(model), tokenizer.pad_token_id or 0, tokenizer.eos_token_id
    prompt_ids = encode_prompts(tokenizer, prompts, max_length)
    order = sorted(range(len(prompts)), key=lambda i: len(prompt_ids[i]))  # similar lengths share a batch
    results: list[str] = [""] * len(prompts)
    for start in tqdm(range(0, len(prompts), batch_size), desc="generating", unit="batch", disable=not progress):
        rows = order[start : start + batch_size]
        seqs = [list(prompt_ids[i]) for i in rows]
        generated: list[list[int]] = [[] for _ in seqs]
        done = [False] * len(seqs)
        for _ in range(max_new_tokens):
            ids, mask = pad_rows(seqs, pad, device)
            last = torch.tensor([[len(s) - 1] for s in seqs])  # [batch 1]
            next_ids = logits_at(ids, mask, last)[:, 0].argmax(-1).tolist()
            for i, token in enumerate(next_ids):
                if done[i]:
                    continue
                if token == eos or (stop_at_newline and "\n" in tokenizer.decode([token])):
                    done[i] = True
                    continue
                generated[i].append(token)
                seqs[i].append(token)
            if all(done):
                break
        for i, tokens in zip(rows, generated, strict=True):
            results[i] = tokenizer.decode(tokens).strip()
    return results


# ---------------------------------------------------------------------- statistics
def accuracy(predictions: Sequence, golds: Sequence) -> float:
    """Share of equal pairs (NaN for no examples).

    >>> accuracy([1, 0, 1, 1], [1, 1, 1, 0])
    0.5
    """
    if len(predictions) != len(golds):
        raise InvalidInputError(f"{len(predictions)} predictions for {len(golds)} gold labels.")
    return float(np.mean([p == g for p, g in zip(predictions, golds, strict=True)])) if golds else float("nan")


def weighted_f1(predictions: Sequence, golds: Sequence) -> float:
    """F1 per gold class, weighted by the class's support (scikit-learn's ``average="weighted"``).

    >>> round(weighted_f1([1, 1, 1, 0], [1, 1, 0, 0]), 4)
    0.7333
    """
    from sklearn.metrics import f1_score

    if not golds:
        return float("nan")
    return float(f1_score(list(golds), list(predictions), average="weighted", zero_division=0))
