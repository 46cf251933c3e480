"""A full single-layer sweep over every expert: one batched forward (``experts`` as a [batch] tensor)
against one forward per expert.

    python bench/interventions.py           # mid-size random Mixtral: 8 layers, d_model 256, 8 experts, seq 128
    python bench/interventions.py --smoke   # tiny sizes, for CI
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleaved_medians, print_table  # noqa: E402

from moelens import HookedMoE, Perturb  # noqa: E402
from moelens.testing import tiny_model  # noqa: E402


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable timings on a shared box)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.smoke:
        sizes = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_local_experts=8, vocab_size=512)
        seq, repeats = 16, 2
    else:
        sizes = dict(
            num_hidden_layers=8, hidden_size=256, intermediate_size=512, num_local_experts=8, num_attention_heads=8,
            num_key_value_heads=8, vocab_size=4000, max_position_embeddings=512,
        )
        seq, repeats = 128, 5
    model = HookedMoE.from_hf(tiny_model("mixtral", 0, **sizes))
    n = model.cfg.n_experts
    layer = model.cfg.moe_layers[len(model.cfg.moe_layers) // 2]
    prompt = torch.randint(3, sizes["vocab_size"], (1, seq), generator=torch.Generator().manual_seed(0))

    def one_per_expert():
        return torch.cat([model.run_with_interventions(prompt, Perturb(layer, e)) for e in range(n)])

    def batched():
        return model.run_with_interventions(prompt.expand(n, -1), Perturb(layer, torch.arange(n)))

    with torch.inference_mode():
        torch.testing.assert_close(batched(), one_per_expert(), rtol=0, atol=1e-4)
        medians = interleaved_medians({"one forward per expert": one_per_expert, "one batched forward": batched}, repeats)
    speedup = medians["one forward per expert"] / medians["one batched forward"]
    rows = [(name, f"{t * 1e3:.0f} ms") for name, t in medians.items()] + [("speedup", f"{speedup:.2f}x")]
    print_table(f"single-layer sweep over {n} experts at layer {layer} (Mixtral, {sizes['num_hidden_layers']} layers, "
                f"d_model {sizes['hidden_size']}, seq {seq}; median of {repeats})", rows, ("variant", "time"))
    return speedup


if __name__ == "__main__":
    main()
