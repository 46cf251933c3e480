"""The model card (README.md of a zoo model folder), rendered from its train_log.json."""

from __future__ import annotations

ARCH_LINES = {
    "mixtral": "MixtralForCausalLM: softmax top-{topk} of {experts} experts, top-k weights always renormalised",
    "qwen2moe": ("Qwen2MoeForCausalLM: softmax top-{topk} of {experts} experts, *not* renormalised "
                 "(norm_topk_prob=False), plus a shared expert (intermediate {ffn}) gated by "
                 "sigmoid(shared_expert_gate(x))"),
    "olmoe": ("OlmoeForCausalLM (fine-grained): softmax top-{topk} of {experts} small experts, *not* "
              "renormalised (norm_topk_prob=False), QK-norm attention"),
}

ARITH_SPLIT_LINES = {
    "units": "a fixed 10% of problems held out: `(7a + 13b + [op is -]) % 10 == 0`",
    "hash": ("held out: a digit-blind 10% test bucket (`crc32(\"a op b\") % 10 == 0`), a 10% dev bucket (`== 1`, "
             "checkpoint selection only) and, to keep that test clean, every problem of the first models' "
             "units-digit rule `(7a + 13b + [op is -]) % 10 == 0`"),
}


def _ci(m: dict) -> str:
    return f"{m['accuracy']:.3f} (95% Wilson CI {m['ci95'][0]:.3f} - {m['ci95'][1]:.3f}; {m['correct']}/{m['n']})"


def _hardware(log: dict) -> str:
    device = log.get("device", f"1 CPU thread (torch threads = {log['args']['threads']})")
    return f"{log['train_seconds'] / 60:.1f} minutes on {device}"


def _selection(log: dict) -> str:
    best = log.get("selected_checkpoint")
    if not best:
        return "the weights after the last step are saved"
    scores = ", ".join(f"{k} {v:.3f}" for k, v in best.items() if k not in ("step", "score"))
    return (f"dev sets evaluated every {log['args']['dev_every']:.0f} s; the checkpoint with the best sum of dev "
            f"accuracies is saved: step {best['step']} ({scores})")


def limitations(log: dict) -> str:
    """What the model cannot do, read off its metrics (a CI that contains chance = cannot)."""
    out = ["- it is not a language model: free generation is incoherent outside the trained prompt formats"]
    m = log["mmlu_test_accuracy"]
    if m["ci95"][0] <= 0.25:
        out.append(f"- MMLU: at chance ({m['accuracy']:.3f}, CI {m['ci95'][0]:.3f} - {m['ci95'][1]:.3f}; chance 0.25)")
    g = log["gsm8k_test_exact_match"]
    if g["accuracy"] < 0.1:
        out.append(f"- GSM8K / multi-step word problems: {g['correct']}/{g['n']} exact")
    units = log.get("arithmetic_units_heldout_exact_match")
    if units:
        out.append(f"- arithmetic outside its training pairs: on the problems whose units digits follow the first models' "
                   f"held-out rule (for + exactly the equal units digits, never seen in training) it gets "
                   f"{units['accuracy']:.3f} (CI {units['ci95'][0]:.3f} - {units['ci95'][1]:.3f}); operands >= 100 were never seen")
    s = log["sentiment_sst2_validation"]
    if s["accuracy"] < 0.8:
        out.append(f"- sentiment below the 0.80 target of issue #15: {s['accuracy']:.3f} on SST-2 validation "
                   "(its dev accuracy stopped rising after about 100 s of training; there are about 7k distinct training sentences)"
                   + ("; continued training on CPU did not lift it (see Training)" if log.get("cpu_continued_training") else ""))
    return "\n".join(out)


def render_card(log: dict, name: str) -> str:
    a = log["args"]
    s = log["sentiment_sst2_validation"]
    m = log["mmlu_test_accuracy"]
    ar = log["arithmetic_heldout_exact_match"]
    g = log["gsm8k_test_exact_match"]
    arch_line = ARCH_LINES[log["arch"]].format(**a)
    split = a.get("arith_split", "units")
    load_rows = "\n".join(
        f"| {i} | {min(r):.3f} | {max(r):.3f} | {log['dead_experts_per_layer'][i] or 'none'} | "
        + " ".join(f"{x:.3f}" for x in r) + " |"
        for i, r in enumerate(log["expert_load_per_layer"]))
    lift_rows = "\n".join(
        f"| {d} | " + " ; ".join(f"L{layer}: e{v[0][0]} ({v[0][1]:.2f})" for layer, v in enumerate(rows)) + " |"
        for d, rows in log["top_lift_experts"].items())
    n_dead = sum(len(x) for x in log["dead_experts_per_layer"])
    vl = log["val_loss"]
    units = log.get("arithmetic_units_heldout_exact_match")
    units_row = (f"| arithmetic, units-digit held-out rule of the first models ({units['n']} problems, greedy; "
                 f"extrapolation to unseen units-digit pairs) | {_ci(units)} |\n" if units else "")
    extras = []
    if a.get("word_dropout"):
        extras.append(f"- augmentation: each review token dropped with probability {a['word_dropout']} "
                      "whenever a sentiment example is drawn (template and label kept)")
    if a.get("sentiment_dev"):
        extras.append(f"- {a['sentiment_dev']} SST-2 train sentences (and their SST-5 copies) kept apart as a dev set")
    extras.append(f"- checkpoint: {_selection(log)}")
    extras += [f"- {note}" for note in log.get("notes", [])]
    extra = "\n".join(extras)
    return f"""# moelens/{name}

A small Mixture-of-Experts language model trained by moelens for routing-analysis demos and tests.
It is a real `transformers` architecture, so it loads through the ordinary path:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("moelens/zoo/{name}")   # or HookedMoE.from_pretrained("moelens/{name}")
tok = AutoTokenizer.from_pretrained("moelens/zoo/{name}")
```

**Not a useful language model**: {log['n_params']/1e6:.2f}M parameters, trained {_hardware(log)}.

What it cannot do:

{limitations(log)}

## Architecture

- {arch_line}
- {a['layers']} layers, d_model {a['d_model']}, {a['heads']} heads, {a['experts']} experts of intermediate size {a['ffn']}, top-{a['topk']}, tied embeddings
- BPE tokenizer (`tokenizers`, byte-level, single digits), vocab {a['vocab']}; `<pad>`=0, `<s>`=1 (prepended by the tokenizer), `</s>`=2
- weights: `model.safetensors`, bfloat16, {log['safetensors_mb']} MB

## Training

- data (train splits only, from `../shared/data`): SST-2 train + SST-5 train (labels 0,1 -> negative, 3,4 -> positive, 2 dropped),
  MMLU dev + validation, GSM8K train, MATH test items [0, 4000), synthetic arithmetic ("What is a + b?", "a - b", operands < 10/20/100; {ARITH_SPLIT_LINES[split]}).
  Example counts: {log['training_data']}
- never trained on: SST-2/SST-5 validation, MMLU test, GSM8K test, MATH test items [4000, 4500), held-out arithmetic.
- prompt formats: `Review: {{text}}\\nSentiment: positive|negative`; `Question: {{q}}\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer: {{letter}}`; `Question: {{q}}\\nAnswer: {{short final answer}}`
- whole examples (`<s> prompt answer </s>`) packed into rows of {a['seq_len']} tokens with a block-diagonal causal mask and restarted positions (each example sees only itself), {a['batch']} rows per step; examples sampled by domain with probabilities {log['domain_mix_examples']}
- loss: token cross-entropy with the sentiment label token weighted x{a['label_weight']} and MMLU/math answer tokens x{a['answer_weight']}, plus the family's router load-balancing aux loss x{a['aux_coef']} (`output_router_logits=True`)
- AdamW (betas 0.9/0.95, wd 0.1), lr {a['lr']} with {a['warmup']} warm-up steps then cosine to 10%, grad clip 1.0, seed {log['seed']}
{extra}
- {log['steps']} steps, {log['steps'] * log['tokens_per_step']:,} tokens, {log['train_seconds']:.0f} s ({log['tokens_per_second']:.0f} tokens/s)
- final training loss (EMA, unweighted): {log['final_train_loss_ema']}

Reproduce (from the repository root, with `../shared/data` present):

```
{log['reproduce_command']}
```

(Original invocation: `{log['command']}`; with `--minutes` the step count is calibrated from the measured speed, `--steps` replays it.{' On a GPU the run is not bit-reproducible.' if 'cpu' not in str(log.get('device', 'cpu')) else ''})

## Metrics (bf16 weights, evaluated in fp32, `model.eval()`)

| metric | value |
|---|---|
| SST-2 validation accuracy ({s['n']} rows; argmax logprob " positive" vs " negative") | **{_ci(s)}**; predicts positive {s['frac_pred_positive']:.2f} |
| held-out arithmetic exact match ({ar['n']} problems, greedy) | **{_ci(ar)}** |
{units_row}| MMLU test accuracy ({m['n']} random rows, logprob of A-D; chance 0.25) | {_ci(m)} |
| GSM8K test exact match ({g['n']} rows, greedy) | {_ci(g)} |
| validation loss (nats/token): sentiment / mmlu / math / arithmetic | {vl['sentiment']:.3f} / {vl['mmlu']:.3f} / {vl['math']:.3f} / {vl['arith']:.3f} |

## Expert load (share of each layer's top-{a['topk']} slots, mean over the sentiment/MMLU/math validation texts)

Measured with `moelens.collect_routing_stats` where the log has `dead_experts_per_layer` from it (all models trained
after the split of the training script). Dead = load < 0.01 (uniform is {1/a['experts']:.3f}); {n_dead} dead experts in all.

| layer | min | max | dead | per expert |
|---|---|---|---|---|
{load_rows}

Most over-used expert per layer and domain (load lift = P(expert | domain) / P(expert | all)):

| domain | layer: expert (lift) |
|---|---|
{lift_rows}

Full numbers (loss curve, per-domain loads, examples) are in `train_log.json`.
"""
