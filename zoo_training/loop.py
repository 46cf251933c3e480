"""Command line, model construction and the training loop of the zoo models.

The loop trains on packed block-causal rows (see :mod:`.data`) with the family's own router
load-balancing loss, on CPU or (``--device cuda``) a GPU with bf16 autocast. ``--minutes`` is a
time budget: the step count is calibrated from the measured speed during warm-up and recorded;
``--steps N`` replays the schedule. With ``--select-on-dev`` the loop evaluates held-apart dev sets
(SST-2 train sentences, dev arithmetic problems) every ``--dev-every`` seconds and keeps the best
checkpoint; ``--no-eval`` stops after saving (evaluate later with ``--evaluate-only``).
"""

from __future__ import annotations

import argparse
import copy
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

from zoo_training import data as zd
from zoo_training import evaluate as ev
from zoo_training.card import render_card
from zoo_training.metrics import evaluate_all

ARCHS = ("mixtral", "qwen2moe", "olmoe")


# -------------------------------------------------------------------------------------- args
def parse_args(argv=None):
    from zoo_training import train as entry

    p = argparse.ArgumentParser(description=entry.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=ARCHS, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--minutes", type=float, default=20.0, help="training time budget (sets steps)")
    p.add_argument("--steps", type=int, default=None, help="exact step count (overrides --minutes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="tiny config + data for smoke tests")
    p.add_argument("--data", default=os.environ.get("MOELENS_DATA", str(zd.DEFAULT_DATA)))
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
    p.add_argument("--attn-dropout", type=float, default=0.0, help="attention dropout (olmoe only)")
    p.add_argument("--label-weight", type=float, default=20.0, help="loss weight of sentiment label token")
    p.add_argument("--sentiment-prompt-weight", type=float, default=1.0,
                   help="loss weight of the review tokens (0: train sentiment on its label alone)")
    p.add_argument("--answer-weight", type=float, default=2.0, help="loss weight of mmlu/math answers")
    p.add_argument("--sentiment-share", type=float, default=0.6,
                   help="probability that a packed example is a sentiment example")
    p.add_argument("--mix", default=None, help='domain sampling weights, e.g. "sentiment=0.4,arith=0.4,mmlu=0.1"')
    p.add_argument("--word-dropout", type=float, default=0.0,
                   help="drop each review token with this probability when a sentiment example is drawn")
    p.add_argument("--arith-split", choices=zd.ARITH_SPLITS, default="units",
                   help="held-out arithmetic rule: units (the first models') or hash (+ units excluded)")
    p.add_argument("--arith-examples", type=int, default=20000)
    p.add_argument("--sentiment-dev", type=int, default=0, help="SST-2 train sentences kept apart as dev")
    p.add_argument("--select-on-dev", action="store_true", help="keep the checkpoint best on the dev sets")
    p.add_argument("--dev-every", type=float, default=60.0, help="seconds between dev evaluations")
    p.add_argument("--select-metric", choices=("sum", "sst2_dev"), default="sum",
                   help="checkpoint score: sum of the dev accuracies, or sst2_dev alone (among the "
                        "checkpoints whose arith_dev is at least --arith-dev-floor)")
    p.add_argument("--arith-dev-floor", type=float, default=0.0,
                   help="with --select-metric sst2_dev: a checkpoint needs this arith_dev to be kept")
    p.add_argument("--init-from", default=None,
                   help="continue training from the model (and tokenizer) saved in this directory; the "
                        "architecture flags are then read from its config")
    p.add_argument("--ema", type=float, default=0.0,
                   help="keep an exponential moving average of the weights with this decay; dev checks and "
                        "the saved model use it")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda trains under bf16 autocast)")
    p.add_argument("--experts-impl", default=None, help="transformers experts implementation, e.g. grouped_mm")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-limit", type=int, default=None)
    p.add_argument("--no-eval", action="store_true", help="save the model and log, skip held-out evaluation")
    p.add_argument("--evaluate-only", action="store_true",
                   help="evaluate the model saved in --out, add the metrics to its train_log.json and card")
    a = p.parse_args(argv)
    if a.tiny:
        a.vocab, a.d_model, a.layers, a.heads, a.experts, a.ffn = 384, 32, 2, 2, 4, 32
        a.seq_len, a.batch, a.warmup = 96, 4, 2
        a.eval_limit = a.eval_limit or 16
        a.arith_examples = min(a.arith_examples, 200)
        a.sentiment_dev = min(a.sentiment_dev, 16)
        if a.steps is None:
            a.steps = 3
    return a


# ------------------------------------------------------------------------------------- model
def build_model(arch: str, a, tokenizer):
    """A freshly initialised HF causal LM of the zoo family ``arch`` with tied embeddings."""
    import transformers as tf

    common = {"vocab_size": len(tokenizer), "hidden_size": a.d_model, "num_hidden_layers": a.layers,
                  "num_attention_heads": a.heads, "num_key_value_heads": a.heads,
                  "max_position_embeddings": 512, "num_experts_per_tok": a.topk,
                  "output_router_logits": True, "router_aux_loss_coef": a.aux_coef,
                  "tie_word_embeddings": True, "pad_token_id": tokenizer.pad_token_id,
                  "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    if arch == "mixtral":
        return tf.MixtralForCausalLM(tf.MixtralConfig(intermediate_size=a.ffn, num_local_experts=a.experts, **common))
    if arch == "qwen2moe":
        cfg = tf.Qwen2MoeConfig(intermediate_size=a.ffn, moe_intermediate_size=a.ffn,
                                shared_expert_intermediate_size=a.ffn, num_experts=a.experts,
                                norm_topk_prob=False, decoder_sparse_step=1, **common)
        return tf.Qwen2MoeForCausalLM(cfg)
    if arch == "olmoe":
        cfg = tf.OlmoeConfig(intermediate_size=a.ffn, num_experts=a.experts, norm_topk_prob=False,
                             attention_dropout=a.attn_dropout, **common)
        return tf.OlmoeForCausalLM(cfg)
    raise ValueError(f"unknown arch {arch!r}; choose one of {ARCHS}")


def save_model(model, out: pathlib.Path) -> None:
    """Save a bf16 copy (the training model keeps its fp32 weights) with the analysis defaults."""
    saved = copy.deepcopy(model).to("cpu", torch.bfloat16).eval()
    saved.config.output_router_logits = False  # analysis/eval default; training passes it explicitly
    saved.save_pretrained(out, safe_serialization=True)


@torch.no_grad()
def dev_scores(model, tokenizer, dev: dict) -> dict:
    """Accuracy on the dev sets held apart from training (checkpoint selection, never the test sets)."""
    out = {}
    if dev.get("sentiment"):
        texts, labels = zip(*dev["sentiment"])
        out["sst2_dev"] = ev.sentiment_accuracy(model, tokenizer, texts, labels, batch_size=256)["accuracy"]
    if dev.get("arith"):
        q, ans = zip(*dev["arith"])
        out["arith_dev"] = ev.exact_match_accuracy(model, tokenizer, q, ans, 6)["accuracy"]
    return out


# -------------------------------------------------------------------------------------- loop
def train(a, model, tokenizer, packer, dev: dict, out: pathlib.Path) -> dict:
    """Run the optimisation; returns the log fields of the run (steps, time, curve, dev history)."""
    device = torch.device(a.device)
    model.to(device)
    use_amp = device.type == "cuda"
    if use_amp:
        torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 parts (dev evaluation) only
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}], lr=a.lr, betas=(0.9, 0.95))
    total_steps = a.steps
    budget = a.minutes * 60
    calib_at = max(a.warmup, 60)

    def lr_at(step):
        if step < a.warmup:
            return a.lr * (step + 1) / a.warmup
        T = total_steps or 10 ** 9
        frac = min(1.0, (step - a.warmup) / max(1, T - a.warmup))
        return a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    aux_loss_fn = importlib.import_module(type(model).__module__).load_balancing_loss_func
    default_impl = getattr(model.config, "_experts_implementation", None)
    if a.experts_impl:
        model.config._experts_implementation = a.experts_impl
    curve, dev_history, best = [], [], None
    averaged = copy.deepcopy(model).eval().requires_grad_(False) if a.ema else model
    model.train()
    t_train = time.time()
    t_calib = None
    last_dev = t_train
    step, ema = 0, None

    def check_dev(step):
        nonlocal best
        model.eval()
        scores = dev_scores(averaged, tokenizer, dev)
        model.train()
        score = dev_selection_score(a, scores)
        dev_history.append({"step": step, "elapsed_s": round(time.time() - t_train, 1), **scores})
        print("dev", json.dumps(dev_history[-1]), flush=True)
        if score is not None and (best is None or score > best["score"]):
            best = {"step": step, "score": score, **scores}
            save_model(averaged, out)

    while True:
        if total_steps is not None and step >= total_steps:
            break
        if step == 10:
            t_calib = time.time()  # the first steps include compilation / allocator warm-up
        if total_steps is None and step == calib_at:
            per_step = (time.time() - t_calib) / (step - 10)
            remaining = 0.92 * (budget - (time.time() - t_train))  # leave time for the dev evaluations
            total_steps = max(step + 1, step + int(remaining / per_step))
            print(f"calibrated: {per_step:.4f} s/step -> {total_steps} steps", flush=True)
        if a.steps is None and time.time() - t_train > budget + 30:
            print("time safety stop", flush=True)
            total_steps = step
            break
        if a.select_on_dev and time.time() - last_dev > a.dev_every:
            check_dev(step)
            last_dev = time.time()
        ids, mask, wts, pos_ids, doc = (t.to(device, non_blocking=True) for t in packer.batch(a.batch, tokenizer.pad_token_id))
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        try:
            ce, aux, nll, w = train_step(a, model, opt, aux_loss_fn, ids, mask, wts, pos_ids, doc, use_amp)
        except Exception as err:  # an experts kernel this machine lacks: fall back to eager, once
            if step > 0 or not a.experts_impl:
                raise
            print(f"experts implementation {a.experts_impl!r} failed ({err!r}); using eager", flush=True)
            a.experts_impl = None
            model.config._experts_implementation = averaged.config._experts_implementation = default_impl
            continue
        if a.ema:  # warm-up of the average: the decay grows to a.ema over the first steps
            decay = min(a.ema, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(list(averaged.parameters()), list(model.parameters()), 1 - decay)
        if step % 10 == 0 or step == (total_steps or 0) - 1:
            with torch.no_grad():
                plain = float((nll * (w > 0)).sum() / (w > 0).sum())
                lab = w == a.label_weight
                lab_loss = float(nll[lab].mean()) if lab.any() else float("nan")
            ema = plain if ema is None else 0.8 * ema + 0.2 * plain
            rec = {"step": step, "loss": round(plain, 4), "weighted_loss": round(float(ce.detach()), 4),
                   "aux_loss": round(float(aux.detach()), 4), "sentiment_label_loss": round(lab_loss, 4),
                   "lr": round(lr_at(step), 6), "elapsed_s": round(time.time() - t_train, 1)}
            curve.append(rec)
            if step % 100 == 0:
                print(json.dumps(rec), f"ema={ema:.3f}", flush=True)
        step += 1
    train_seconds = time.time() - t_train
    if a.select_on_dev:
        check_dev(step)
    else:
        save_model(averaged, out)
    model.config._experts_implementation = default_impl
    return {"steps": total_steps, "train_seconds": round(train_seconds, 1), "loss_curve": curve,
            "final_train_loss_ema": round(ema, 4) if ema is not None else None,
            "dev_history": dev_history, "selected_checkpoint": best, "device": device_name(device),
            "experts_implementation": a.experts_impl or "eager"}


def dev_selection_score(a, scores: dict) -> float | None:
    """The checkpoint-selection score of dev accuracies ``scores`` (None = not eligible)."""
    if a.select_metric == "sum":
        return sum(scores.values())
    if scores.get("arith_dev", 1.0) < a.arith_dev_floor:
        return None
    return scores["sst2_dev"]


def load_init_model(a):
    """The fp32 model and tokenizer saved in ``a.init_from``; copies its architecture into ``a``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(a.init_from, dtype=torch.float32)
    cfg = model.config
    a.d_model, a.layers, a.heads = cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads
    a.experts = getattr(cfg, "num_experts", None) or cfg.num_local_experts
    a.topk, a.vocab = cfg.num_experts_per_tok, cfg.vocab_size
    a.ffn = getattr(cfg, "moe_intermediate_size", None) or cfg.intermediate_size
    if hasattr(cfg, "attention_dropout"):
        cfg.attention_dropout = a.attn_dropout
    return model, AutoTokenizer.from_pretrained(a.init_from)


def train_step(a, model, opt, aux_loss_fn, ids, mask, wts, pos_ids, doc, use_amp: bool):
    """One optimiser step on a packed batch; -> (weighted CE, aux loss, per-token NLL, loss weights)."""
    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=use_amp):
        # base model with the block-causal mask; the family's own load-balancing loss on its router
        # logits (computed here because the CausalLM head would pass the 4-D mask to it)
        base = model.model(input_ids=ids, attention_mask=zd.block_causal_mask(doc), position_ids=pos_ids,
                           output_router_logits=True)
        logits = model.lm_head(base.last_hidden_state)[:, :-1].float()
        tgt, w = ids[:, 1:], wts[:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                                                reduction="none").view_as(w)
        ce = (nll * w).sum() / w.sum()
        aux = aux_loss_fn(base.router_logits, a.experts, a.topk, mask)
        loss = ce + a.aux_coef * aux
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return ce, aux, nll, w


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} thread(s))"


# -------------------------------------------------------------------------------------- main
def reproduce_command(a, steps) -> str:
    """The command that replays this run: the original flags with ``--steps`` for ``--minutes``."""
    skip = {"minutes", "steps", "out", "evaluate_only", "no_eval", "eval_limit", "data", "threads", "tiny"}
    defaults = vars(parse_args(["--arch", a.arch, "--out", a.out]))
    flags = [f"--{k.replace('_', '-')}" + ("" if v is True else f" {shlex.quote(str(v))}")
             for k, v in vars(a).items() if k not in skip and k != "arch" and v != defaults.get(k) and v is not False]
    return " ".join([f"python -m zoo_training.train --arch {a.arch} --out {a.out} --steps {steps}", *flags]
                    + (["--tiny"] if a.tiny else []))


def evaluate_saved(out: pathlib.Path, a, log: dict) -> dict:
    """Evaluate the bf16 weights in ``out`` (loaded back, run in fp32); write train_log.json and README.md."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    saved = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    evsets = zd.load_eval_sets(pathlib.Path(a.data), a.seed, a.eval_limit, a.arith_split)
    log = {**log, "model_class": type(saved).__name__,
           **evaluate_all(saved, tokenizer, evsets)}
    (out / "train_log.json").write_text(json.dumps(log, indent=1))
    (out / "README.md").write_text(render_card(log, out.name))
    s = log["sentiment_sst2_validation"]
    ar = log["arithmetic_heldout_exact_match"]
    print(f"evaluated: sst2 acc {s['accuracy']:.3f} CI {s['ci95'][0]:.3f}-{s['ci95'][1]:.3f}; arithmetic "
          f"{ar['accuracy']:.3f}; val loss {log['val_loss']}; dead {log['dead_experts_per_layer']}", flush=True)
    return log


def main(argv=None):
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    random.seed(a.seed)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    out = pathlib.Path(a.out)
    if a.evaluate_only:
        return evaluate_saved(out, a, json.loads((out / "train_log.json").read_text()))
    out.mkdir(parents=True, exist_ok=True)
    data = pathlib.Path(a.data)
    command = "python -m zoo_training.train " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
    rng = random.Random(a.seed)
    t_start = time.time()

    examples, dev = zd.load_training_examples(data, rng, a.tiny, arith_split=a.arith_split,
                                              arith_examples=a.arith_examples,
                                              sentiment_dev=a.sentiment_dev, seed=a.seed)
    init_model = None
    if a.init_from:
        init_model, tokenizer = load_init_model(a)
    else:
        tok_dir = pathlib.Path(a.tokenizer) if a.tokenizer else (out / "_tokenizer" if a.tiny else zd.DEFAULT_TOKENIZER)
        tok_texts = [p + ans for v in examples.values() for p, ans in v]
        tokenizer = zd.get_tokenizer(tok_dir, tok_texts, a.vocab, a.retrain_tokenizer)
    label_tokens = {w: tokenizer(w, add_special_tokens=False)["input_ids"] for w in ev.SENTIMENT_LABEL_WORDS}
    print("label word tokens:", label_tokens, flush=True)

    encoded = {d: zd.encode_examples(tokenizer, ex, a.label_weight if d == "sentiment" else a.answer_weight,
                                     a.sentiment_prompt_weight if d == "sentiment" else 1.0)
               for d, ex in examples.items()}
    mix = zd.domain_mix(a.sentiment_share, a.mix)
    word_dropout = None
    if a.word_dropout:  # keep "<s>Review:" and "\nSentiment: label</s>" intact
        head = len(tokenizer(ev.sentiment_prompt("").split("\n")[0])["input_ids"])
        tail = len(tokenizer("\nSentiment: positive", add_special_tokens=False)["input_ids"]) + 1
        word_dropout = {"sentiment": (a.word_dropout, head, tail)}
    packer = zd.Packer(encoded, mix, a.seq_len, a.seed, word_dropout)
    print({d: len(v) for d, v in packer.enc.items()}, "dropped (too long):", packer.dropped, flush=True)

    model = init_model if init_model is not None else build_model(a.arch, a, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{a.arch}: {n_params/1e6:.2f}M params", flush=True)
    tokenizer.save_pretrained(out)
    run = train(a, model, tokenizer, packer, dev, out)
    size_mb = (out / "model.safetensors").stat().st_size / 1e6
    steps = run["steps"]
    log = {
        "arch": a.arch, "seed": a.seed, "command": command,
        "reproduce_command": reproduce_command(a, steps),
        "args": vars(a), "n_params": n_params, "safetensors_mb": round(size_mb, 2), "dtype": "bfloat16",
        "tokens_per_step": a.batch * a.seq_len, **run,
        "tokens_seen": steps * a.batch * a.seq_len,
        "total_seconds": round(time.time() - t_start, 1),
        "tokens_per_second": round(steps * a.batch * a.seq_len / max(run["train_seconds"], 1e-9), 1),
        "domain_mix_examples": mix, "domain_tokens_seen": packer.token_counts,
        "training_data": {d: len(v) for d, v in examples.items()},
        "label_word_tokens": label_tokens,
    }
    (out / "train_log.json").write_text(json.dumps(log, indent=1))
    print(f"trained: steps={steps} in {run['train_seconds']:.0f}s, {log['tokens_seen']:,} tokens; "
          f"size {size_mb:.2f} MB; selected {run['selected_checkpoint']}", flush=True)
    if a.no_eval:
        return log
    return evaluate_saved(out, a, log)
