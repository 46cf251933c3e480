"""Prompt formats and evaluation helpers shared by the zoo training script and the package.

Prompt formats (the rest of moelens uses exactly these):

- sentiment: ``"Review: {text}\\nSentiment: {label_word}"`` with label words `` positive`` /
  `` negative`` (SST-5: labels 0,1 -> negative, 3,4 -> positive, 2 (neutral) dropped).
- MMLU: ``"Question: {q}\\nA. {c0}\\nB. {c1}\\nC. {c2}\\nD. {c3}\\nAnswer: {letter}"``
- math (gsm8k, MATH, arithmetic): ``"Question: {q}\\nAnswer: {answer}"`` (short final answer).

Sentiment accuracy compares the summed log-probabilities of the two label words' tokens after the
prompt ``"Review: {text}\\nSentiment:"`` (with the zoo tokenizer each label word is one token).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

SENTIMENT_LABEL_WORDS = (" negative", " positive")  # index = binary label
MMLU_LETTERS = ("A", "B", "C", "D")


def sentiment_prompt(text: str) -> str:
    return f"Review: {text}\nSentiment:"


def format_sentiment(text: str, label: int) -> str:
    return sentiment_prompt(text) + SENTIMENT_LABEL_WORDS[int(label)]


def sst5_to_binary(label: int) -> int | None:
    """SST-5 fine label -> binary label (0 negative, 1 positive); neutral (2) -> None (dropped)."""
    label = int(label)
    if label in (0, 1):
        return 0
    if label in (3, 4):
        return 1
    return None


def mmlu_prompt(question: str, choices: Sequence[str]) -> str:
    lines = [f"Question: {question}"]
    lines += [f"{MMLU_LETTERS[i]}. {c}" for i, c in enumerate(choices)]
    return "\n".join(lines) + "\nAnswer:"


def format_mmlu(question: str, choices: Sequence[str], letter: str) -> str:
    return mmlu_prompt(question, choices) + " " + letter


def math_prompt(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def format_math(question: str, answer: str) -> str:
    return math_prompt(question) + " " + str(answer).strip()


def wilson_ci(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _encode_batch(tokenizer, prompts: Sequence[str], max_length: int | None = None):
    enc = [tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
    if max_length is not None:
        enc = [e[-max_length:] for e in enc]  # keep the end (the question / label position)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = max(len(e) for e in enc)
    ids = torch.full((len(enc), width), pad, dtype=torch.long)
    mask = torch.zeros((len(enc), width), dtype=torch.long)
    for i, e in enumerate(enc):
        ids[i, : len(e)] = torch.tensor(e)
        mask[i, : len(e)] = 1
    return ids, mask, torch.tensor([len(e) - 1 for e in enc])


@torch.no_grad()
def choice_logprobs(model, tokenizer, prompts: Sequence[str], continuations: Sequence[str],
                    batch_size: int = 32, max_length: int | None = 256) -> torch.Tensor:
    """Summed log-prob of each continuation after each prompt: ``[len(prompts), len(continuations)]``.

    Right padding, model in eval mode; continuations are tokenised without special tokens.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    cont_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
    single = all(len(c) == 1 for c in cont_ids)
    out = torch.empty(len(prompts), len(continuations))
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        if single:
            ids, mask, last = _encode_batch(tokenizer, chunk, max_length)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            lp = torch.log_softmax(logits[torch.arange(len(chunk)), last.to(device)], dim=-1)
            out[start:start + len(chunk)] = lp[:, [c[0] for c in cont_ids]].cpu()
        else:
            for j, c in enumerate(cont_ids):
                full = [p_ids + c for p_ids in (tokenizer(p)["input_ids"] for p in chunk)]
                width = max(len(f) for f in full)
                ids = torch.full((len(full), width), tokenizer.pad_token_id or 0, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for i, f in enumerate(full):
                    ids[i, : len(f)] = torch.tensor(f)
                    mask[i, : len(f)] = 1
                logp = torch.log_softmax(
                    model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float(), -1)
                for i, f in enumerate(full):
                    n = len(f)
                    pos = torch.arange(n - len(c) - 1, n - 1, device=device)
                    out[start + i, j] = logp[i, pos, torch.tensor(c, device=device)].sum().cpu()
    model.train(was_training)
    return out


def sentiment_accuracy(model, tokenizer, texts: Sequence[str], labels: Sequence[int],
                       batch_size: int = 32) -> dict:
    """Binary sentiment accuracy (argmax of logprob of " negative" vs " positive") + Wilson 95% CI."""
    lp = choice_logprobs(model, tokenizer, [sentiment_prompt(t) for t in texts],
                         list(SENTIMENT_LABEL_WORDS), batch_size=batch_size)
    pred = lp.argmax(-1)
    gold = torch.tensor([int(x) for x in labels])
    correct = int((pred == gold).sum())
    lo, hi = wilson_ci(correct, len(gold))
    return {"accuracy": correct / max(1, len(gold)), "correct": correct, "n": len(gold),
            "ci95": [lo, hi], "frac_pred_positive": float(pred.float().mean())}


def mmlu_accuracy(model, tokenizer, rows: Sequence[dict], batch_size: int = 16) -> dict:
    """MMLU accuracy: argmax over the logprob of " A".." D" after "Answer:"."""
    prompts = [mmlu_prompt(r["text"], r["choices"]) for r in rows]
    lp = choice_logprobs(model, tokenizer, prompts, [" " + L for L in MMLU_LETTERS],
                         batch_size=batch_size)
    pred = lp.argmax(-1)
    gold = torch.tensor([int(r["label"]) for r in rows])
    correct = int((pred == gold).sum())
    lo, hi = wilson_ci(correct, len(gold))
    return {"accuracy": correct / max(1, len(gold)), "correct": correct, "n": len(gold), "ci95": [lo, hi]}


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 8,
                   batch_size: int = 64) -> list[str]:
    """Greedy continuation (no cache, right padding) up to newline / EOS; returns stripped strings."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    results = []
    for start in range(0, len(prompts), batch_size):
        seqs = [tokenizer(p)["input_ids"] for p in prompts[start:start + batch_size]]
        done = [False] * len(seqs)
        gen = [[] for _ in seqs]
        for _ in range(max_new_tokens):
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), tokenizer.pad_token_id or 0, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, s in enumerate(seqs):
                ids[i, : len(s)] = torch.tensor(s)
                mask[i, : len(s)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            last = torch.tensor([len(s) - 1 for s in seqs], device=device)
            nxt = logits[torch.arange(len(seqs), device=device), last].argmax(-1).tolist()
            for i, t in enumerate(nxt):
                if done[i]:
                    continue
                if t == eos or "\n" in tokenizer.decode([t]):
                    done[i] = True
                    continue
                gen[i].append(t)
                seqs[i] = seqs[i] + [t]
            if all(done):
                break
        results += [tokenizer.decode(g).strip() for g in gen]
    model.train(was_training)
    return results


def exact_match_accuracy(model, tokenizer, questions: Sequence[str], answers: Sequence[str],
                         max_new_tokens: int = 8) -> dict:
    preds = greedy_answers(model, tokenizer, [math_prompt(q) for q in questions], max_new_tokens)
    correct = sum(p == str(a).strip() for p, a in zip(preds, answers))
    lo, hi = wilson_ci(correct, len(answers))
    return {"accuracy": correct / max(1, len(answers)), "correct": correct, "n": len(answers),
            "ci95": [lo, hi], "examples": [[q, a, p] for q, a, p in list(zip(questions, answers, preds))[:5]]}
