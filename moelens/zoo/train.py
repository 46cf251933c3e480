"""Train the moelens zoo models (small MoE LMs with real HF architectures) on CPU.

    python -m moelens.zoo.train --arch mixtral  --out moelens/zoo/mixtral-tiny  --minutes 12 --seed 0
    python -m moelens.zoo.train --arch qwen2moe --out moelens/zoo/qwen2moe-tiny --minutes 12 --seed 0
    python -m moelens.zoo.train --arch mixtral --out /tmp/t --steps 3 --tiny      # smoke test

With ``--minutes`` the step count is calibrated from the measured speed during warm-up and recorded
in train_log.json / README.md; ``--steps N`` (the card's reproduce command) replays the same run
deterministically. Data: train splits of ../shared/data only (sst2/sst5 train, mmlu dev+validation,
gsm8k train, MATH test items [0, 4000)) plus a synthetic arithmetic task; never sst2/sst5 validation,
mmlu test, gsm8k test or MATH test items [4000, 4500) (the held-out evaluation parts).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import pathlib
import random
import shlex
import sys
import time

import torch

from moelens.zoo import evaluate as ev

DEFAULT_DATA = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data"
DEFAULT_TOKENIZER = pathlib.Path(__file__).resolve().parent / "tokenizer"
MATH_HELDOUT_START = 4000  # MATH test items >= this index are held out for evaluation
SPECIALS = ["<pad>", "<s>", "</s>"]  # ids 0, 1, 2


# ----------------------------------------------------------------------------------------- data
def read_jsonl(path: pathlib.Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def arithmetic_problems(rng: random.Random, n: int, heldout: bool) -> list[tuple[str, str]]:
    """Synthetic "What is a + b?" problems; a deterministic 10% of (op, a, b) triples is held out."""
    out = []
    while len(out) < n:
        op = rng.choice("+-")
        hi = rng.choice([10, 20, 100])
        a, b = rng.randrange(hi), rng.randrange(hi)
        if op == "-" and b > a:
            a, b = b, a
        is_held = (a * 7 + b * 13 + (op == "-")) % 10 == 0
        if is_held != heldout:
            continue
        out.append((f"What is {a} {op} {b}?", str(a + b if op == "+" else a - b)))
    return out


def load_training_examples(data: pathlib.Path, rng: random.Random, tiny: bool) -> dict[str, list]:
    """Examples as (prompt, answer, domain-subsource) per domain; answer gets the extra loss weight."""
    sent = []
    for r in read_jsonl(data / "sst2" / "train.jsonl"):
        sent.append((ev.sentiment_prompt(r["text"]), ev.SENTIMENT_LABEL_WORDS[int(r["label"])]))
    for r in read_jsonl(data / "sst5" / "train.jsonl"):
        y = ev.sst5_to_binary(r["label"])
        if y is not None:
            sent.append((ev.sentiment_prompt(r["text"]), ev.SENTIMENT_LABEL_WORDS[y]))
    mmlu = []
    for split in ("dev", "validation"):
        for r in read_jsonl(data / "mmlu" / f"{split}.jsonl"):
            mmlu.append((ev.mmlu_prompt(r["text"], r["choices"]), " " + r["answer"]))
    gsm = [(ev.math_prompt(r["text"]), " " + r["answer"].strip())
           for r in read_jsonl(data / "gsm8k" / "train.jsonl")]
    mth = [(ev.math_prompt(r["text"]), " " + r["answer"].strip())
           for r in read_jsonl(data / "math" / "test.jsonl")[:MATH_HELDOUT_START]]
    arith = [(ev.math_prompt(q), " " + a) for q, a in arithmetic_problems(rng, 20000, heldout=False)]
    out = {"sentiment": sent, "mmlu": mmlu, "gsm8k": gsm, "math": mth, "arith": arith}
    if tiny:
        out = {k: v[:100] for k, v in out.items()}
    return out


def load_eval_sets(data: pathlib.Path, seed: int, limit: int | None) -> dict:
    rng = random.Random(seed + 1)
    sst2 = read_jsonl(data / "sst2" / "validation.jsonl")
    mmlu = read_jsonl(data / "mmlu" / "test.jsonl")
    rng.shuffle(mmlu)
    gsm = read_jsonl(data / "gsm8k" / "test.jsonl")
    mth = read_jsonl(data / "math" / "test.jsonl")[MATH_HELDOUT_START:]
    arith = arithmetic_problems(random.Random(seed + 2), 300, heldout=True)
    lim = (lambda xs, n: xs[: min(n, limit)]) if limit else (lambda xs, n: xs[:n])
    return {"sst2": lim(sst2, len(sst2)), "mmlu": lim(mmlu, 500), "gsm8k": lim(gsm, 200),
            "math": lim(mth, 200), "arith": lim(arith, 300)}


# ------------------------------------------------------------------------------------ tokenizer
def train_tokenizer(texts: list[str], vocab_size: int, out_dir: pathlib.Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token=None, padding_side="right",
                                   model_max_length=512)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


def get_tokenizer(path: pathlib.Path, texts: list[str], vocab_size: int, retrain: bool):
    from transformers import AutoTokenizer

    if retrain or not (path / "tokenizer.json").exists():
        print(f"training BPE tokenizer (vocab {vocab_size}) -> {path}", flush=True)
        train_tokenizer(texts, vocab_size, path)
    return AutoTokenizer.from_pretrained(path)


# ---------------------------------------------------------------------------------------- model
def build_model(arch: str, a, tokenizer):
    from transformers import MixtralConfig, MixtralForCausalLM, Qwen2MoeConfig, Qwen2MoeForCausalLM

    common = dict(vocab_size=len(tokenizer), hidden_size=a.d_model, num_hidden_layers=a.layers,
                  num_attention_heads=a.heads, num_key_value_heads=a.heads,
                  max_position_embeddings=512, num_experts_per_tok=a.topk,
                  output_router_logits=True, router_aux_loss_coef=a.aux_coef,
                  tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if arch == "mixtral":
        cfg = MixtralConfig(intermediate_size=a.ffn, num_local_experts=a.experts, **common)
        return MixtralForCausalLM(cfg)
    if arch == "qwen2moe":
        cfg = Qwen2MoeConfig(intermediate_size=a.ffn, moe_intermediate_size=a.ffn,
                             shared_expert_intermediate_size=a.ffn, num_experts=a.experts,
                             norm_topk_prob=False, decoder_sparse_step=1, **common)
        return Qwen2MoeForCausalLM(cfg)
    raise ValueError(f"unknown arch {arch!r}")


# ----------------------------------------------------------------------------------- batching
class Packer:
    """Packs whole examples (BOS prompt answer EOS) into fixed-length rows, sampled by domain weight."""

    def __init__(self, encoded: dict[str, list], weights: dict[str, float], seq_len: int, seed: int):
        self.enc = {k: [e for e in v if len(e[0]) <= seq_len] for k, v in encoded.items()}
        self.dropped = {k: len(encoded[k]) - len(self.enc[k]) for k in encoded}
        self.domains = [k for k in weights if self.enc.get(k)]
        self.w = [weights[k] for k in self.domains]
        self.seq_len = seq_len
        self.rng = random.Random(seed)
        self.pending = None
        self.token_counts = {k: 0 for k in self.domains}

    def _sample(self):
        d = self.rng.choices(self.domains, self.w)[0]
        return d, self.rng.choice(self.enc[d])

    def batch(self, bsz: int, pad_id: int):
        """-> ids, 2-D mask (1 = real token), loss weights, position ids, 4-D block-causal mask.

        Each example attends only to itself (block-diagonal causal mask) and positions restart at
        0, so a packed example is seen exactly as it would be alone (as at evaluation time).
        """
        S = self.seq_len
        ids = torch.full((bsz, S), pad_id, dtype=torch.long)
        wts = torch.zeros((bsz, S))
        mask = torch.zeros((bsz, S), dtype=torch.long)
        pos_ids = torch.zeros((bsz, S), dtype=torch.long)
        doc = torch.full((bsz, S), -1, dtype=torch.long)
        for b in range(bsz):
            pos, k = 0, 0
            while True:
                d, (toks, tw) = self.pending if self.pending else self._sample()
                self.pending = None
                if pos + len(toks) > S:
                    self.pending = (d, (toks, tw))
                    break
                n = len(toks)
                ids[b, pos:pos + n] = torch.tensor(toks)
                wts[b, pos:pos + n] = torch.tensor(tw)
                mask[b, pos:pos + n] = 1
                pos_ids[b, pos:pos + n] = torch.arange(n)
                doc[b, pos:pos + n] = k
                self.token_counts[d] += n
                pos += n
                k += 1
            pos_ids[b, pos:] = torch.arange(S - pos)
        causal = torch.tril(torch.ones(S, S, dtype=torch.bool))
        block = (doc[:, :, None] == doc[:, None, :]) & causal
        return ids, mask, wts, pos_ids, block[:, None]


def encode_examples(tokenizer, examples, answer_weight: float):
    """-> list of (token ids, per-token loss weight of *predicting* that token)."""
    prompts = tokenizer([p for p, _ in examples], add_special_tokens=True)["input_ids"]
    answers = tokenizer([a for _, a in examples], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    out = []
    for p, a in zip(prompts, answers):
        toks = p + a + [eos]
        w = [0.0] + [1.0] * (len(p) - 1) + [answer_weight] * len(a) + [1.0]
        out.append((toks, w))
    return out


# --------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def domain_loss_and_load(model, tokenizer, texts: list[str], n_experts: int, top_k: int, bsz=16):
    """Mean token CE over full formatted texts and per-layer expert load (fraction of top-k slots)."""
    model.eval()
    tot_loss, tot_tok = 0.0, 0
    counts = None
    for s in range(0, len(texts), bsz):
        enc = [tokenizer(t)["input_ids"][:256] + [tokenizer.eos_token_id] for t in texts[s:s + bsz]]
        w = max(len(e) for e in enc)
        ids = torch.full((len(enc), w), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, e in enumerate(enc):
            ids[i, :len(e)] = torch.tensor(e)
            mask[i, :len(e)] = 1
        out = model(input_ids=ids, attention_mask=mask, output_router_logits=True)
        logp = torch.log_softmax(out.logits[:, :-1].float(), -1)
        nll = -logp.gather(-1, ids[:, 1:, None])[..., 0]
        m = mask[:, 1:].float()
        tot_loss += float((nll * m).sum())
        tot_tok += int(m.sum())
        flat_mask = mask.reshape(-1).bool()
        layer_counts = []
        for rl in out.router_logits:
            sel = rl.float()[flat_mask].topk(top_k, dim=-1).indices.reshape(-1)
            layer_counts.append(torch.bincount(sel, minlength=n_experts).float())
        c = torch.stack(layer_counts)
        counts = c if counts is None else counts + c
    load = counts / counts.sum(-1, keepdim=True)
    return tot_loss / max(1, tot_tok), load


def evaluate_all(model, tokenizer, evsets: dict, n_experts: int, top_k: int) -> dict:
    model.eval()
    t0 = time.time()
    res: dict = {}
    res["sentiment_sst2_validation"] = ev.sentiment_accuracy(
        model, tokenizer, [r["text"] for r in evsets["sst2"]], [r["label"] for r in evsets["sst2"]])
    res["mmlu_test_accuracy"] = ev.mmlu_accuracy(model, tokenizer, evsets["mmlu"])
    aq, aa = zip(*evsets["arith"])
    res["arithmetic_heldout_exact_match"] = ev.exact_match_accuracy(model, tokenizer, aq, aa, 6)
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
    res["val_loss"], loads = {}, {}
    for d, tx in texts.items():
        loss, load = domain_loss_and_load(model, tokenizer, tx, n_experts, top_k)
        res["val_loss"][d] = loss
        loads[d] = load
    total = sum(loads[d] for d in ("sentiment", "mmlu", "math")) / 3
    res["expert_load_per_layer"] = [[round(float(x), 4) for x in row] for row in total]
    res["dead_experts_per_layer"] = [[i for i, x in enumerate(row) if x < 0.01] for row in total]
    res["expert_load_per_domain"] = {d: [[round(float(x), 4) for x in row] for row in l]
                                     for d, l in loads.items()}
    # load lift: P(expert | domain) / P(expert | all domains); top experts per layer per domain
    res["top_lift_experts"] = {}
    for d in ("sentiment", "mmlu", "math"):
        lift = loads[d] / total.clamp_min(1e-9)
        res["top_lift_experts"][d] = [
            [[int(i), round(float(lift[l, i]), 3)] for i in lift[l].argsort(descending=True)[:2]]
            for l in range(lift.shape[0])]
    res["eval_seconds"] = round(time.time() - t0, 1)
    return res


# -------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=["mixtral", "qwen2moe"], required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--minutes", type=float, default=20.0, help="training time budget (sets steps)")
    p.add_argument("--steps", type=int, default=None, help="exact step count (overrides --minutes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="tiny config + data for smoke tests")
    p.add_argument("--data", default=os.environ.get("MOELENS_DATA", str(DEFAULT_DATA)))
    p.add_argument("--tokenizer", default=None, help="tokenizer dir (reused if present)")
    p.add_argument("--retrain-tokenizer", action="store_true")
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--d-model", type=int, default=160)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--topk", type=int, default=2)
    p.add_argument("--ffn", type=int, default=256, help="expert (and shared expert) intermediate size")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--aux-coef", type=float, default=0.02)
    p.add_argument("--label-weight", type=float, default=20.0, help="loss weight of sentiment label token")
    p.add_argument("--answer-weight", type=float, default=2.0, help="loss weight of mmlu/math answers")
    p.add_argument("--sentiment-share", type=float, default=0.6,
                   help="probability that a packed example is a sentiment example")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-limit", type=int, default=None)
    a = p.parse_args(argv)
    if a.tiny:
        a.vocab, a.d_model, a.layers, a.heads, a.experts, a.ffn = 384, 32, 2, 2, 4, 32
        a.seq_len, a.batch, a.warmup = 96, 4, 2
        a.eval_limit = a.eval_limit or 16
        if a.steps is None:
            a.steps = 3
    return a


OTHER_MIX = {"mmlu": 0.30, "gsm8k": 0.25, "math": 0.20, "arith": 0.25}  # split of the non-sentiment share


def domain_mix(sentiment_share: float) -> dict[str, float]:
    return {"sentiment": sentiment_share, **{k: round(v * (1 - sentiment_share), 4) for k, v in OTHER_MIX.items()}}


def main(argv=None):
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    random.seed(a.seed)
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = pathlib.Path(a.data)
    command = "python -m moelens.zoo.train " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
    rng = random.Random(a.seed)
    t_start = time.time()

    examples = load_training_examples(data, rng, a.tiny)
    tok_dir = pathlib.Path(a.tokenizer) if a.tokenizer else (out / "_tokenizer" if a.tiny else DEFAULT_TOKENIZER)
    tok_texts = [p + ans for v in examples.values() for p, ans in v]
    tokenizer = get_tokenizer(tok_dir, tok_texts, a.vocab, a.retrain_tokenizer)
    for w in ev.SENTIMENT_LABEL_WORDS:
        n = len(tokenizer(w, add_special_tokens=False)["input_ids"])
        print(f"label word {w!r}: {n} token(s)", flush=True)

    encoded = {}
    for d, ex in examples.items():
        aw = a.label_weight if d == "sentiment" else a.answer_weight
        encoded[d] = encode_examples(tokenizer, ex, aw)
    mix = domain_mix(a.sentiment_share)
    packer = Packer(encoded, mix, a.seq_len, a.seed)
    print({d: len(v) for d, v in packer.enc.items()}, "dropped (too long):", packer.dropped, flush=True)

    model = build_model(a.arch, a, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{a.arch}: {n_params/1e6:.2f}M params", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}], lr=a.lr, betas=(0.9, 0.95))

    total_steps = a.steps
    budget = a.minutes * 60
    calib_at = min(a.warmup, 60)

    def lr_at(step):
        if step < a.warmup:
            return a.lr * (step + 1) / a.warmup
        T = total_steps or 10 ** 9
        frac = min(1.0, (step - a.warmup) / max(1, T - a.warmup))
        return a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    aux_loss_fn = importlib.import_module(type(model).__module__).load_balancing_loss_func
    curve = []
    model.train()
    t_train = time.time()
    step = 0
    ema = None
    while True:
        if total_steps is not None and step >= total_steps:
            break
        if total_steps is None and step == calib_at:
            per_step = (time.time() - t_train) / step
            total_steps = max(step + 1, int(budget / per_step))
            print(f"calibrated: {per_step:.3f} s/step -> {total_steps} steps", flush=True)
        if time.time() - t_train > 1.25 * budget + 60 and a.steps is None:
            print("time safety stop", flush=True)
            total_steps = step
            break
        ids, mask, wts, pos_ids, block = packer.batch(a.batch, tokenizer.pad_token_id)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        # base model with the block-causal mask; HF's own load-balancing loss on its router logits
        # (computed here because the CausalLM head would pass the 4-D mask to it)
        base = model.model(input_ids=ids, attention_mask=block, position_ids=pos_ids,
                           output_router_logits=True)
        logits = model.lm_head(base.last_hidden_state)[:, :-1].float()
        tgt = ids[:, 1:]
        w = wts[:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                                                reduction="none").view_as(w)
        ce = (nll * w).sum() / w.sum()
        aux = aux_loss_fn(base.router_logits, a.experts, a.topk, mask)
        loss = ce + a.aux_coef * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            plain = float((nll * (w > 0)).sum() / (w > 0).sum())
            lab = w[:, :] == a.label_weight
            lab_loss = float(nll[lab].mean()) if lab.any() else float("nan")
        ema = plain if ema is None else 0.98 * ema + 0.02 * plain
        if step % 10 == 0 or step == (total_steps or 0) - 1:
            rec = {"step": step, "loss": round(plain, 4), "weighted_loss": round(float(ce.detach()), 4),
                   "aux_loss": round(float(aux.detach()), 4), "sentiment_label_loss": round(lab_loss, 4),
                   "lr": round(lr_at(step), 6), "elapsed_s": round(time.time() - t_train, 1)}
            curve.append(rec)
            if step % 50 == 0:
                print(json.dumps(rec), f"ema={ema:.3f}", flush=True)
        step += 1
    train_seconds = time.time() - t_train

    # save in bf16; evaluate the saved weights (loaded back, run in fp32)
    model.eval()
    model.config.output_router_logits = False  # analysis/eval default; training passes it explicitly
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    saved = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    saved.eval()
    evsets = load_eval_sets(data, a.seed, a.eval_limit)
    metrics = evaluate_all(saved, tokenizer, evsets, a.experts, a.topk)
    size_mb = (out / "model.safetensors").stat().st_size / 1e6

    log = {
        "arch": a.arch, "model_class": type(saved).__name__, "seed": a.seed, "command": command,
        "reproduce_command": (f"python -m moelens.zoo.train --arch {a.arch} --out {a.out} --steps {total_steps}"
                              f" --seed {a.seed}" + (" --tiny" if a.tiny else "")),
        "args": vars(a), "n_params": n_params, "safetensors_mb": round(size_mb, 2), "dtype": "bfloat16",
        "steps": total_steps, "tokens_per_step": a.batch * a.seq_len,
        "train_seconds": round(train_seconds, 1), "total_seconds": round(time.time() - t_start, 1),
        "tokens_per_second": round(total_steps * a.batch * a.seq_len / max(train_seconds, 1e-9), 1),
        "final_train_loss_ema": round(ema, 4) if ema is not None else None,
        "domain_mix_examples": mix, "domain_tokens_seen": packer.token_counts,
        "training_data": {d: len(v) for d, v in examples.items()},
        "label_word_tokens": {w: tokenizer(w, add_special_tokens=False)["input_ids"]
                              for w in ev.SENTIMENT_LABEL_WORDS},
        "loss_curve": curve, **metrics,
    }
    (out / "train_log.json").write_text(json.dumps(log, indent=1))
    (out / "README.md").write_text(render_card(log, out.name))
    s = metrics["sentiment_sst2_validation"]
    print(f"done: steps={total_steps} train {train_seconds:.0f}s; sst2 acc {s['accuracy']:.3f} "
          f"CI {s['ci95'][0]:.3f}-{s['ci95'][1]:.3f}; val loss {metrics['val_loss']}; "
          f"dead {metrics['dead_experts_per_layer']}; size {size_mb:.2f} MB", flush=True)
    return log


def render_card(log: dict, name: str) -> str:
    a = log["args"]
    s = log["sentiment_sst2_validation"]
    m = log["mmlu_test_accuracy"]
    ar = log["arithmetic_heldout_exact_match"]
    g = log["gsm8k_test_exact_match"]
    arch_line = ("MixtralForCausalLM: softmax top-2 of 8 experts, top-k weights always renormalised"
                 if log["arch"] == "mixtral" else
                 "Qwen2MoeForCausalLM: softmax top-2 of 8 experts, *not* renormalised (norm_topk_prob=False), "
                 "plus a shared expert (intermediate %d) gated by sigmoid(shared_expert_gate(x))" % a["ffn"])
    load_rows = "\n".join(
        f"| {i} | {min(r):.3f} | {max(r):.3f} | {log['dead_experts_per_layer'][i] or 'none'} | "
        + " ".join(f"{x:.3f}" for x in r) + " |"
        for i, r in enumerate(log["expert_load_per_layer"]))
    lift_rows = "\n".join(
        f"| {d} | " + " ; ".join(f"L{l}: e{v[0][0]} ({v[0][1]:.2f})" for l, v in enumerate(rows)) + " |"
        for d, rows in log["top_lift_experts"].items())
    vl = log["val_loss"]
    return f"""# moelens/{name}

A tiny Mixture-of-Experts language model trained by moelens for routing-analysis demos and tests.
It is a real `transformers` architecture, so it loads through the ordinary path:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("moelens/zoo/{name}")   # or HookedMoE.from_pretrained("moelens/{name}")
tok = AutoTokenizer.from_pretrained("moelens/zoo/{name}")
```

**Not a useful language model**: {log['n_params']/1e6:.2f}M parameters, trained {log['train_seconds']/60:.1f} minutes on 1 CPU thread.

## Architecture

- {arch_line}
- {a['layers']} layers, d_model {a['d_model']}, {a['heads']} heads, {a['experts']} experts of intermediate size {a['ffn']}, top-{a['topk']}, tied embeddings
- BPE tokenizer (`tokenizers`, byte-level, single digits), vocab {a['vocab']}; `<pad>`=0, `<s>`=1 (prepended by the tokenizer), `</s>`=2
- weights: `model.safetensors`, bfloat16, {log['safetensors_mb']} MB

## Training

- data (train splits only, from `../shared/data`): SST-2 train + SST-5 train (labels 0,1 -> negative, 3,4 -> positive, 2 dropped),
  MMLU dev + validation, GSM8K train, MATH test items [0, 4000), synthetic arithmetic ("What is a + b?", "a - b", operands < 10/20/100; a fixed 10% of problems held out).
  Example counts: {log['training_data']}
- never trained on: SST-2/SST-5 validation, MMLU test, GSM8K test, MATH test items [4000, 4500), held-out arithmetic.
- prompt formats: `Review: {{text}}\\nSentiment: positive|negative`; `Question: {{q}}\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer: {{letter}}`; `Question: {{q}}\\nAnswer: {{short final answer}}`
- whole examples (`<s> prompt answer </s>`) packed into rows of {a['seq_len']} tokens with a block-diagonal causal mask and restarted positions (each example sees only itself), {a['batch']} rows per step; examples sampled by domain with probabilities {log['domain_mix_examples']}
- loss: token cross-entropy with the sentiment label token weighted x{a['label_weight']} and MMLU/math answer tokens x{a['answer_weight']}, plus HF's router load-balancing aux loss x{a['aux_coef']} (`output_router_logits=True`)
- AdamW (betas 0.9/0.95, wd 0.1), lr {a['lr']} with {a['warmup']} warm-up steps then cosine to 10%, grad clip 1.0, seed {log['seed']}
- {log['steps']} steps, {log['steps'] * log['tokens_per_step']:,} tokens, {log['train_seconds']:.0f} s ({log['tokens_per_second']:.0f} tokens/s), torch threads = {a['threads']}
- final training loss (EMA, unweighted): {log['final_train_loss_ema']}

Reproduce (from the repository root, with `../shared/data` present):

```
{log['reproduce_command']}
```

(Original invocation: `{log['command']}`; with `--minutes` the step count is calibrated from the measured speed, `--steps` replays it.)

## Metrics (bf16 weights, evaluated in fp32, `model.eval()`)

| metric | value |
|---|---|
| SST-2 validation accuracy ({s['n']} rows; argmax logprob " positive" vs " negative") | **{s['accuracy']:.3f}** (95% Wilson CI {s['ci95'][0]:.3f} - {s['ci95'][1]:.3f}; predicts positive {s['frac_pred_positive']:.2f}) |
| MMLU test accuracy ({m['n']} random rows, logprob of A-D; chance 0.25) | {m['accuracy']:.3f} (CI {m['ci95'][0]:.3f} - {m['ci95'][1]:.3f}) |
| held-out arithmetic exact match ({ar['n']} problems, greedy) | {ar['accuracy']:.3f} (CI {ar['ci95'][0]:.3f} - {ar['ci95'][1]:.3f}) |
| GSM8K test exact match ({g['n']} rows, greedy) | {g['accuracy']:.3f} |
| validation loss (nats/token): sentiment / mmlu / math / arithmetic | {vl['sentiment']:.3f} / {vl['mmlu']:.3f} / {vl['math']:.3f} / {vl['arith']:.3f} |

## Expert load (fraction of top-{a['topk']} slots, mean over the sentiment/MMLU/math validation texts)

Dead = load < 0.01 (uniform is {1/a['experts']:.3f}).

| layer | min | max | dead | per expert |
|---|---|---|---|---|
{load_rows}

Most over-used expert per layer and domain (load lift = P(expert | domain) / P(expert | all)):

| domain | layer: expert (lift) |
|---|---|
{lift_rows}

Full numbers (loss curve, per-domain loads, examples) are in `train_log.json`.
"""


if __name__ == "__main__":
    main()
