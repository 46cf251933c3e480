"""moelens at the real shapes of published MoE models (random weights, bf16): what a GPU run costs.

Shapes (random init, no download): OLMoE-1B-7B (16 layers, 64 experts, top-8, d_model 2048),
Qwen1.5-MoE-A2.7B (24 layers, 60 experts + shared expert, top-4, d_model 2048) and a 4-layer slice
of Mixtral-8x7B (8 experts, top-2, d_model 4096). For each:

- routing-statistics throughput (``collect_routing_stats``) against the bare HF forward (tokens/s);
- the exact and first-order driver sweep on ``--prompts`` prompts of 64 tokens, with the time
  extrapolated to 1,000 prompts (goal: the exact map of the OLMoE shape on 1,000 prompts in under
  10 minutes on one H200);
- batched routing mediation (``routing_mediation(positions=False)``) against the per-patch loop
  of ``bench/mediation.py`` on a few prompt pairs;
- ``NNsightMoE`` overhead: its forward against ``HookedMoE``'s on the same weights.

    python bench/scale.py                 # real shapes, bf16, needs a GPU (about 140 GB for all three)
    python bench/scale.py --smoke         # reduced shapes on CPU, fp32, seconds: what CI runs
    python bench/scale.py --models olmoe  # one shape

The smoke run only proves the script works: its figures say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import print_table
from mediation import loop as mediation_loop
from mediation import pairs

from moelens import HookedMoE, collect_routing_stats, driver_effects
from moelens.analysis.mediation import routing_mediation
from moelens.testing import tiny_model

# family, config overrides of the published model (attention heads as published; vocab as published)
SHAPES = {
    "olmoe": ("olmoe", {"num_hidden_layers": 16, "num_experts": 64, "num_experts_per_tok": 8, "hidden_size": 2048,
                        "intermediate_size": 1024, "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 50304}),
    "qwen2moe": ("qwen2_moe", {"num_hidden_layers": 24, "num_experts": 60, "num_experts_per_tok": 4, "hidden_size": 2048,
                               "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632, "intermediate_size": 5632,
                               "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 151936}),
    "mixtral-4L": ("mixtral", {"num_hidden_layers": 4, "num_local_experts": 8, "num_experts_per_tok": 2, "hidden_size": 4096,
                               "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000}),
}
# Smoke: the same families and top-k rules at toy width, fp32 on CPU.
SMOKE = {
    "olmoe": {"num_hidden_layers": 2, "num_experts": 8, "num_experts_per_tok": 2, "hidden_size": 32, "intermediate_size": 32,
              "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 512},
    "qwen2moe": {"num_hidden_layers": 2, "num_experts": 6, "num_experts_per_tok": 2, "hidden_size": 32, "moe_intermediate_size": 32,
                 "shared_expert_intermediate_size": 64, "intermediate_size": 64, "num_attention_heads": 4,
                 "num_key_value_heads": 4, "vocab_size": 512},
    "mixtral-4L": {"num_hidden_layers": 2, "num_local_experts": 4, "num_experts_per_tok": 2, "hidden_size": 32,
                   "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512},
}
LENGTH = 64


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def build(name: str, smoke: bool, device: torch.device, dtype: torch.dtype) -> HookedMoE:
    family, shape = SHAPES[name]
    overrides = SMOKE[name] if smoke else shape
    with torch.device(device):
        hf = tiny_model(family, 0, **overrides).to(dtype)
    return HookedMoE.from_hf(hf)


def bench_one(name: str, args, device: torch.device, dtype: torch.dtype) -> list[tuple[str, ...]]:
    model = build(name, args.smoke, device, dtype)
    vocab = model.cfg.d_vocab
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (args.prompts, LENGTH), generator=gen).to(device)
    rows = []
    tokens = ids.numel()
    with torch.no_grad():
        model.hf_model(ids[: args.batch])  # warm-up
        bare = timed(lambda: [model.hf_model(ids[i : i + args.batch]) for i in range(0, len(ids), args.batch)], device)
    stats = timed(lambda: collect_routing_stats(model, {"x": ids}, batch_size=args.batch, progress=False), device)
    rows.append((name, "bare HF forward", f"{tokens / bare:,.0f} tok/s", "1.00x"))
    rows.append((name, "collect_routing_stats", f"{tokens / stats:,.0f} tok/s", f"{stats / bare:.2f}x the bare forward"))
    for method in ("exact", "first_order"):
        kwargs = {"calibrate": 0, "n_targets": 8} if method == "first_order" else {}
        seconds = timed(lambda m=method, k=kwargs: driver_effects(model, ids, method=m, batch_size=args.batch, progress=False, **k),
                        device)
        per_1000 = seconds / len(ids) * 1000
        rows.append((name, f"driver sweep ({method}), {len(ids)} x {LENGTH} tokens", f"{seconds:.1f} s",
                     f"{per_1000 / 60:.1f} min per 1,000 prompts"))
    clean, corrupt = pairs(args.pairs, 16, 3, vocab)
    clean, corrupt = clean.to(device), corrupt.to(device)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, -1, 3] - logits[:, -1, 4]

    batched = timed(lambda: routing_mediation(model, clean, corrupt, metric=metric, positions=False, progress=False), device)
    looped = timed(lambda: mediation_loop(model, clean, corrupt), device)
    rows.append((name, f"mediation, {args.pairs} pairs", f"batched {batched:.2f} s, loop {looped:.2f} s",
                 f"speedup {looped / batched:.1f}x"))
    try:
        from moelens.backends.nnsight import NNsightMoE
    except ImportError:  # the nnsight extra is optional
        rows.append((name, "NNsightMoE overhead", "nnsight not installed", ""))
        return rows
    from transformers import AutoTokenizer

    from moelens.zoo import ZOO_DIR

    # nnsight's pipeline wants a tokenizer; the bench passes token ids, so the zoo's will do.
    traced = NNsightMoE.from_hf(model.hf_model, tokenizer=AutoTokenizer.from_pretrained(ZOO_DIR / "tokenizer"))
    batch = ids[: args.batch]
    with torch.no_grad():
        traced(batch)  # warm-up
        hooked_s = timed(lambda: model(batch), device)
        nns_s = timed(lambda: traced(batch), device)
    rows.append((name, "NNsightMoE forward", f"{nns_s * 1000:.1f} ms vs HookedMoE {hooked_s * 1000:.1f} ms",
                 f"{nns_s / hooked_s:.2f}x"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="reduced shapes on CPU, fp32")
    parser.add_argument("--models", default=",".join(SHAPES), help=f"comma-separated, from {list(SHAPES)}")
    parser.add_argument("--prompts", type=int, default=None, help="prompts of 64 tokens for the driver sweep (default 1000; smoke 4)")
    parser.add_argument("--pairs", type=int, default=None, help="prompt pairs for mediation (default 8; smoke 2)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 32; smoke 2)")
    args = parser.parse_args(argv)
    args.prompts = args.prompts or (4 if args.smoke else 1000)
    args.pairs = args.pairs or (2 if args.smoke else 8)
    args.batch = args.batch or (2 if args.smoke else 32)
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if args.smoke else torch.bfloat16
    if not args.smoke and device.type != "cuda":
        print("no GPU: the real shapes need one (use --smoke on CPU)")
        return 2
    if device.type == "cpu":
        torch.set_num_threads(1)
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name not in SHAPES:
            parser.error(f"unknown model {name!r}; choose from {list(SHAPES)}")
        rows += bench_one(name, args, device, dtype)
    mode = "smoke: reduced shapes, CPU, fp32" if args.smoke else f"real shapes, {torch.cuda.get_device_name()} bf16"
    print_table(f"moelens at scale ({mode})", rows, ("model", "measure", "figure", "relative"))
    if args.smoke:
        print("\nGPU figures unmeasured: this smoke run only checks that the script works at reduced shape on CPU.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
