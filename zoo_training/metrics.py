"""Held-out evaluation of a trained zoo model: task accuracies with Wilson CIs, validation loss per
domain, and expert load measured by :func:`moelens.collect_routing_stats` (the same routing the
analyses see)."""

from __future__ import annotations

import time

import torch

from zoo_training import evaluate as ev

DEAD_LOAD = 0.01  # an expert with less than this share of its layer's top-k slots counts as dead


@torch.no_grad()
def domain_loss(model, tokenizer, texts: list[str], bsz: int = 16) -> float:
    """Mean next-token cross-entropy (nats) over whole formatted texts (+ EOS), padding excluded."""
    model.eval()
    tot_loss, tot_tok = 0.0, 0
    for s in range(0, len(texts), bsz):
        enc = [tokenizer(t)["input_ids"][:256] + [tokenizer.eos_token_id] for t in texts[s:s + bsz]]
        w = max(len(e) for e in enc)
        ids = torch.full((len(enc), w), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, e in enumerate(enc):
            ids[i, :len(e)] = torch.tensor(e)
            mask[i, :len(e)] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits
        logp = torch.log_softmax(logits[:, :-1].float(), -1)
        nll = -logp.gather(-1, ids[:, 1:, None])[..., 0]
        m = mask[:, 1:].float()
        tot_loss += float((nll * m).sum())
        tot_tok += int(m.sum())
    return tot_loss / max(1, tot_tok)


def expert_load(model, tokenizer, texts: dict[str, list[str]]) -> torch.Tensor:
    """``[domain moe_layer expert]`` share of each layer's top-k slots, from collect_routing_stats."""
    from moelens import HookedMoE, collect_routing_stats

    hooked = HookedMoE.from_hf(model, tokenizer)
    stats = collect_routing_stats(hooked, texts, batch_size=16, progress=False)
    return stats.activation_rate / stats.activation_rate.sum(-1, keepdim=True)


def sentiment_items(model, tokenizer, rows: list[dict]) -> dict:
    """:func:`ev.sentiment_accuracy` plus ``items``, one "1"/"0" per row (correct or not), so that a
    test can reproduce any slice of the card's figure exactly."""
    lp = ev.choice_logprobs(model, tokenizer, [ev.sentiment_prompt(r["text"]) for r in rows],
                            list(ev.SENTIMENT_LABEL_WORDS))
    pred = lp.argmax(-1)
    hits = [int(p) == int(r["label"]) for p, r in zip(pred.tolist(), rows)]
    return {**_scored(hits), "frac_pred_positive": float(pred.float().mean())}


def exact_match_items(model, tokenizer, problems, max_new_tokens: int) -> dict:
    """:func:`ev.exact_match_accuracy` of ``(question, answer)`` pairs plus per-item ``items``."""
    preds = ev.greedy_answers(model, tokenizer, [ev.math_prompt(q) for q, _ in problems], max_new_tokens)
    hits = [p == str(a).strip() for p, (_, a) in zip(preds, problems)]
    return {**_scored(hits), "examples": [[q, a, p] for (q, a), p in list(zip(problems, preds))[:5]]}


def _scored(hits: list[bool]) -> dict:
    correct = sum(hits)
    return {"accuracy": correct / max(1, len(hits)), "correct": correct, "n": len(hits),
            "ci95": list(ev.wilson_ci(correct, len(hits))), "items": "".join("1" if h else "0" for h in hits)}


def rounded(t: torch.Tensor, nd: int = 4) -> list:
    return [rounded(x, nd) for x in t] if t.dim() else round(float(t), nd)


def evaluate_all(model, tokenizer, evsets: dict) -> dict:
    """All held-out metrics of the card (see :func:`zoo_training.data.load_eval_sets`)."""
    model.eval()
    t0 = time.time()
    res: dict = {}
    res["sentiment_sst2_validation"] = sentiment_items(model, tokenizer, evsets["sst2"])
    res["mmlu_test_accuracy"] = ev.mmlu_accuracy(model, tokenizer, evsets["mmlu"])
    res["arithmetic_heldout_exact_match"] = exact_match_items(model, tokenizer, evsets["arith"], 6)
    if "arith_units" in evsets:
        res["arithmetic_units_heldout_exact_match"] = exact_match_items(model, tokenizer, evsets["arith_units"], 6)
    g = evsets["gsm8k"][:100]
    res["gsm8k_test_exact_match"] = ev.exact_match_accuracy(
        model, tokenizer, [r["text"] for r in g], [r["answer"] for r in g], 8)
    texts = {
        "sentiment": [ev.format_sentiment(r["text"], r["label"]) for r in evsets["sst2"][:300]],
        "mmlu": [ev.format_mmlu(r["text"], r["choices"], r["answer"]) for r in evsets["mmlu"][:200]],
        "math": ([ev.format_math(r["text"], r["answer"]) for r in evsets["gsm8k"][:100]]
                 + [ev.format_math(r["text"], r["answer"]) for r in evsets["math"][:100]]),
        "arith": [ev.format_math(q, a) for q, a in evsets["arith"][:200]],
    }
    res["val_loss"] = {d: domain_loss(model, tokenizer, tx) for d, tx in texts.items()}
    domains = list(texts)
    loads = expert_load(model, tokenizer, texts)  # [domain layer expert]
    total = loads[[domains.index(d) for d in ("sentiment", "mmlu", "math")]].mean(0)
    res["expert_load_per_layer"] = rounded(total)
    res["dead_experts_per_layer"] = [[i for i, x in enumerate(row) if x < DEAD_LOAD] for row in total]
    res["expert_load_per_domain"] = {d: rounded(loads[i]) for i, d in enumerate(domains)}
    # load lift: P(expert | domain) / P(expert | all domains); top experts per layer per domain
    res["top_lift_experts"] = {}
    for d in ("sentiment", "mmlu", "math", "arith"):
        lift = loads[domains.index(d)] / total.clamp_min(1e-9)
        res["top_lift_experts"][d] = [
            [[int(i), round(float(lift[layer, i]), 3)] for i in lift[layer].argsort(descending=True)[:2]]
            for layer in range(lift.shape[0])]
    res["eval_seconds"] = round(time.time() - t0, 1)
    return res
