"""Routing mediation on CPU: the batched sweep against one forward per patch.

Mixtral-shaped model of the driver bench (8 layers x 8 experts, top-2, reduced width, random
weights): for every pair of token-aligned prompts (a few positions corrupted) and every (MoE layer,
expert), the indirect effect of patching that expert's routing (its dense gate at every position
set to the corrupted run's value) on a logit difference at the last position.

- **loop**: what a user writes by hand: for every pair and every (layer, expert), one full forward
  of the clean prompt with the patch (the block output of that layer moved by
  ``C_e(x, w_corrupted) - C_e(x, w_clean)`` at every position, from the clean cache);
- **batched**: ``routing_mediation(..., positions=False)``: patches start at their layer from the
  clean residual stream, many rows per forward, unchanged gates skipped; it also computes the
  per-layer and all-routing effects.

Timings: medians of interleaved repeats, one torch thread.

    python bench/mediation.py            # full run (about a minute)
    python bench/mediation.py --smoke    # tiny sizes, seconds: what CI runs
    python bench/mediation.py --check    # exit 1 if batched < 3x the loop

Target (full mode): batched >= 3x faster than the loop at the Mixtral shape.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import interleaved_medians, print_table

from moelens import HookedMoE
from moelens.analysis._routing_patch import dense_gates, expert_contribution
from moelens.analysis.mediation import routing_mediation
from moelens.testing import tiny_model

SHAPE = {"num_hidden_layers": 8, "num_local_experts": 8, "num_experts_per_tok": 2, "hidden_size": 64, "intermediate_size": 224}
SMOKE = {"num_hidden_layers": 2, "num_local_experts": 4, "num_experts_per_tok": 2, "hidden_size": 32, "intermediate_size": 64}
COMMON = {"vocab_size": 512, "num_attention_heads": 4, "num_key_value_heads": 2, "initializer_range": 0.1}


def metric(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1, 3] - logits[:, -1, 4]


def pairs(n: int, length: int, changed: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1234)
    clean = torch.randint(3, vocab, (n, length), generator=gen)
    corrupt = clean.clone()
    for i in range(n):
        where = torch.randperm(length, generator=gen)[:changed]
        corrupt[i, where] = torch.randint(3, vocab, (changed,), generator=gen)
    return clean, corrupt


def loop(model: HookedMoE, clean: torch.Tensor, corrupt: torch.Tensor) -> torch.Tensor:
    """Indirect effects ``[pair moe_layer expert]``, one full forward per (pair, layer, expert)."""
    layers, n_e = model.cfg.moe_layers, model.cfg.n_experts
    out = torch.zeros(len(clean), len(layers), n_e, dtype=torch.float64)
    names = [f"blocks.{L}.moe.hook_{s}" for L in layers for s in ("in", "topk_indices", "topk_weights")]
    with torch.no_grad():
        for i in range(len(clean)):
            c, x = clean[i : i + 1], corrupt[i : i + 1]
            logits, cache_c = model.run_with_cache(c, names_filter=names)
            _, cache_x = model.run_with_cache(x, names_filter=names)
            base = metric(logits).double()
            for li, layer in enumerate(layers):
                gate = {k: dense_gates(cache[f"blocks.{layer}.moe.hook_topk_indices"], cache[f"blocks.{layer}.moe.hook_topk_weights"], n_e)[0]
                        for k, cache in (("c", cache_c), ("x", cache_x))}
                tokens = cache_c[f"blocks.{layer}.moe.hook_in"][0]  # [pos d_model]
                for e in range(n_e):
                    expert = torch.full((len(tokens),), e)
                    delta = (expert_contribution(model, layer, tokens, expert, gate["x"][:, e])
                             - expert_contribution(model, layer, tokens, expert, gate["c"][:, e]))

                    def add(value, hook, delta=delta):
                        return value + delta[None].to(value.dtype)

                    patched = model.run_with_hooks(c, [(f"blocks.{layer}.moe.hook_out", add)])
                    out[i, li, e] = float(metric(patched).double() - base)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--check", action="store_true", help="exit 1 if the 3x target is missed")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--length", type=int, default=24)
    parser.add_argument("--changed", type=int, default=2, help="corrupted positions per pair")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = SMOKE if args.smoke else SHAPE
    n_pairs, length, repeat = (2, 8, 1) if args.smoke else (args.pairs, args.length, args.repeat)
    model = HookedMoE.from_hf(tiny_model("mixtral", 0, **COMMON, **shape))
    clean, corrupt = pairs(n_pairs, length, args.changed, model.cfg.d_vocab)
    results = {}

    def run_batched():
        results["batched"] = routing_mediation(model, clean, corrupt, metric=metric, positions=False, progress=False)

    def run_loop():
        results["loop"] = loop(model, clean, corrupt)

    times = interleaved_medians({"loop": run_loop, "batched": run_batched}, repeats=repeat, warmup=0 if args.smoke else 1)
    diff = float((results["batched"].per_pair_indirect - results["loop"]).abs().max())
    largest = float(results["loop"].abs().max())
    ratio = times["loop"] / times["batched"]
    cfg = model.cfg
    title = (f"routing mediation, Mixtral shape {len(cfg.moe_layers)}L x {cfg.n_experts}E top-{cfg.top_k}, {n_pairs} pairs "
             f"x {length} tokens, {args.changed} corrupted, {torch.get_num_threads()} thread(s){' [smoke]' if args.smoke else ''}")
    print_table(title, [("loop (one forward per patch)", f"{times['loop']:.3f}", "1.0"),
                        ("batched routing_mediation", f"{times['batched']:.3f}", f"{ratio:.1f}")],
                ("method", "median s", "speedup"))
    print(f"speedup batched vs loop: {ratio:.1f}x; max |batched - loop| = {diff:.2e} (largest effect {largest:.3g})")
    missed = not args.smoke and ratio < 3
    if not args.smoke:
        print("target >= 3x: " + ("met" if not missed else f"missed ({ratio:.1f}x)"))
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
