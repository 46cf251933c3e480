"""Driver experts of a zoo model (a script, not imported by the package) on held-out task prompts, per layer (issue #15's layer claim).

    python -m zoo_training.drivers moelens/olmoe-deep --n 48

For each task (SST-2 validation reviews, held-out arithmetic problems) it runs
``moelens.driver_effects(method="exact", positions="last")`` on the answer-predicting prompts and
prints, per MoE layer, the share of the summed driver effect, the layers of the top-10 drivers and
``middle_share()`` next to ``middle_share_uniform()``, the share of a flat profile at that depth.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from moelens import HookedMoE, driver_effects
from zoo_training import data as zd
from zoo_training import evaluate as ev


def task_prompts(n: int, arith_split: str) -> dict[str, list[str]]:
    sst2 = zd.read_jsonl(zd.DEFAULT_DATA / "sst2" / "validation.jsonl")[:n]
    arith = zd.arithmetic_problems(random.Random(2), n, heldout=True, split=arith_split)
    return {"sentiment": [ev.sentiment_prompt(r["text"]) for r in sst2],
            "arith": [ev.math_prompt(q) for q, _ in arith]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--n", type=int, default=48)
    p.add_argument("--arith-split", default="hash")
    p.add_argument("--json", default=None, help="also write the per-task effects here")
    a = p.parse_args()
    torch.set_num_threads(1)
    model = HookedMoE.from_pretrained(a.model, dtype=torch.float32)
    out, lines = {}, [f"# Driver experts of `{a.model}` per layer\n",
                      (f"`moelens.driver_effects(method=\"exact\", positions=\"last\")` on the first {a.n} "
                      "held-out prompts of each task (SST-2 validation reviews; held-out arithmetic problems), "
                      "effect = mean KL of the next-token distribution at the answer position when one expert's "
                      f"router logit is pushed down. Produced by `python -m zoo_training.drivers {a.model} --n {a.n}`.\n")]
    for task, prompts in task_prompts(a.n, a.arith_split).items():
        t0 = time.time()
        eff = driver_effects(model, prompts, method="exact", positions="last", progress=False)
        totals = eff.layer_totals()
        top = eff.top(10)
        out[task] = {"share": totals["share"].round(4).tolist(), "top10_layers": top["layer"].tolist(),
                     "top10_experts": top["expert"].tolist(), "middle_share": eff.middle_share(),
                     "seconds": round(time.time() - t0, 1)}
        lines.append(f"## {task}\n")
        lines.append("| layer | " + " | ".join(str(x) for x in totals["layer"]) + " |")
        lines.append("|---|" + "---|" * len(totals) + "")
        lines.append("| share of summed effect | " + " | ".join(f"{x:.3f}" for x in totals["share"]) + " |")
        lines.append("| strongest expert | " + " | ".join(f"e{x}" for x in totals["top_expert"]) + " |")
        lines.append("")
        lines.append(f"- top-10 drivers (layer, expert): {list(zip(top['layer'].tolist(), top['expert'].tolist()))}")
        lines.append(f"- middle third of the layers ({len(totals) // 3}..{len(totals) - len(totals) // 3 - 1}) "
                     f"holds {eff.middle_share():.3f} of the summed effect (uniform: "
                     f"{eff.middle_share_uniform():.3f})")
        lines.append(f"- {out[task]['seconds']} s on 1 CPU thread\n")
    print("\n".join(lines))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
