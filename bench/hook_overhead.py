"""Hook overhead: the wrapped forward (no hooks; full routing cache) against the bare HF forward.

    python bench/hook_overhead.py            # mid-size random Mixtral: 8 layers, d_model 512, 8 experts, seq 512
    python bench/hook_overhead.py --smoke    # tiny sizes, for CI

Targets (issue 2): no hooks <= 1.03x, full routing cache <= 1.15x.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleaved_medians, print_table  # noqa: E402

from moelens import HookedMoE  # noqa: E402
from moelens.testing import tiny_model  # noqa: E402

ROUTING = ("hook_router_logits", "hook_router_scores", "hook_topk_indices", "hook_topk_weights")


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (seconds), for CI")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable timings on a shared box)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.smoke:
        sizes = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_local_experts=8, vocab_size=512)
        batch, seq, repeats = 2, 32, args.repeats or 3
    else:
        sizes = dict(
            num_hidden_layers=8, hidden_size=512, intermediate_size=1024, num_local_experts=8, num_attention_heads=8,
            num_key_value_heads=8, vocab_size=8000, max_position_embeddings=1024,
        )
        batch, seq, repeats = 1, 512, args.repeats or 15
    hf = tiny_model("mixtral", 0, **sizes)
    model = HookedMoE.from_hf(hf)
    ids = torch.randint(3, sizes["vocab_size"], (batch, seq), generator=torch.Generator().manual_seed(0))
    routing = lambda name: name.endswith(ROUTING)  # noqa: E731

    with torch.inference_mode():
        assert torch.equal(hf(ids).logits, model(ids)), "parity broke"
        medians = interleaved_medians(
            {
                "bare HF forward": lambda: hf(ids, use_cache=False),
                "HookedMoE, no hooks": lambda: model(ids),
                "HookedMoE, full routing cache": lambda: model.run_with_cache(ids, names_filter=routing),
                "HookedMoE, cache everything": lambda: model.run_with_cache(ids),
            },
            repeats,
        )
    bare = medians["bare HF forward"]
    rows = [(name, f"{seconds * 1e3:.1f} ms", f"{seconds / bare:.3f}x") for name, seconds in medians.items()]
    shape = f"{sizes['num_hidden_layers']} layers, d_model {sizes['hidden_size']}, {sizes['num_local_experts']} experts, batch {batch} x seq {seq}"
    print_table(f"hook overhead (Mixtral, {shape}; median of {repeats}, interleaved, {torch.get_num_threads()} thread(s))", rows, ("variant", "time", "vs bare"))
    return {name: seconds / bare for name, seconds in medians.items()}


if __name__ == "__main__":
    main()
