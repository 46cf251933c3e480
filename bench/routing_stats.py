"""Throughput of collect_routing_stats against the bare HF forward over the same batches, and peak
memory as the dataset grows 10x (each size measured in its own process: ru_maxrss is a high-water mark).

    python bench/routing_stats.py           # mid-size random Mixtral, 64 and 640 texts of 128 tokens
    python bench/routing_stats.py --smoke   # tiny sizes, for CI

Target (issue 4): >= 0.9x the bare forward's tokens/s; peak memory flat as the data grows.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from moelens import HookedMoE, collect_routing_stats
from moelens.testing import tiny_model

SIZES = {
    "smoke": dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_local_experts=8, vocab_size=512),
    "full": dict(
        num_hidden_layers=8, hidden_size=256, intermediate_size=512, num_local_experts=8, num_attention_heads=8,
        num_key_value_heads=8, vocab_size=4000, max_position_embeddings=512,
    ),
}


def measure(mode: str, n_texts: int, seq: int, batch_size: int) -> dict:
    sizes = SIZES[mode]
    hf = tiny_model("mixtral", 0, **sizes)
    model = HookedMoE.from_hf(hf)
    ids = torch.randint(3, sizes["vocab_size"], (n_texts, seq), generator=torch.Generator().manual_seed(0))
    batches = ids.split(batch_size)
    with torch.inference_mode():
        hf(batches[0], use_cache=False)  # warm-up
        start = time.perf_counter()
        for batch in batches:
            hf(batch, use_cache=False)
        bare = time.perf_counter() - start
    start = time.perf_counter()
    collect_routing_stats(model, {"data": ids}, batch_size=batch_size, progress=False)
    stats_time = time.perf_counter() - start
    tokens = n_texts * seq
    return {
        "tokens": tokens,
        "bare_tok_s": tokens / bare,
        "stats_tok_s": tokens / stats_time,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--child", nargs=4, metavar=("MODE", "N", "SEQ", "BATCH"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable timings on a shared box)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        mode, n, seq, batch = args.child
        print(json.dumps(measure(mode, int(n), int(seq), int(batch))))
        return []
    mode, base, seq, batch = ("smoke", 8, 16, 4) if args.smoke else ("full", 64, 128, 16)
    results = []
    for n in (base, base * 10):
        out = subprocess.run(
            [sys.executable, __file__, "--child", mode, str(n), str(seq), str(batch)], capture_output=True, text=True, check=True
        )
        results.append({"texts": n, **json.loads(out.stdout.strip().splitlines()[-1])})
    print(f"\nrouting statistics throughput ({mode}: Mixtral {SIZES[mode]['num_hidden_layers']} layers, d_model "
          f"{SIZES[mode]['hidden_size']}, seq {seq}, batch {batch})")
    print("texts  tokens   bare HF tok/s  collect tok/s  ratio   peak RSS")
    for r in results:
        print(f"{r['texts']:<6} {r['tokens']:<8} {r['bare_tok_s']:<14.0f} {r['stats_tok_s']:<14.0f} "
              f"{r['stats_tok_s'] / r['bare_tok_s']:<7.3f} {r['peak_rss_mb']:.0f} MB")
    print(f"peak memory ratio 10x data / 1x data: {results[1]['peak_rss_mb'] / results[0]['peak_rss_mb']:.3f}")
    return results


if __name__ == "__main__":
    main()
