"""``moelens.evaluate`` through HookedMoE and through NNsightMoE wrapping the same HF model: parity
(prediction agreement, max |score difference|, identical generated texts) and CPU time.

    python bench/evaluate_backends.py            # zoo models; sst2 (200), sst5 (100), arithmetic (100)
    python bench/evaluate_backends.py --smoke    # a random tiny Mixtral and 6 inline records, for CI

One thread (``torch.set_num_threads(1)``); the two backends run interleaved, ``--repeats`` times,
and the table reports the median CPU time (``time.process_time``: robust on a shared machine).
Interventions: none, ``Scale("all", [0, 1], factor=1.2)`` and ``Ablate("all", [0])``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import print_table  # noqa: E402

import moelens  # noqa: E402
from moelens import Ablate, HookedMoE, Scale  # noqa: E402
from moelens.backends.nnsight import NNsightMoE  # noqa: E402

INTERVENTIONS = {"none": None, "scale 1.2": [Scale("all", [0, 1], factor=1.2)], "ablate e0": [Ablate("all", [0])]}
RECORDS = [{"id": str(i), "text": t, "label": y} for i, (t, y) in enumerate(
    [("a gem .", 1), ("dull .", 0), ("pure joy", 1), ("a mess .", 0), ("superb cast", 1), ("boring .", 0)])]


def _models(smoke: bool, names: list[str]) -> list[tuple[str, HookedMoE]]:
    if smoke:
        from transformers import AutoTokenizer

        from moelens.testing import tiny_model
        from moelens.zoo import ZOO_DIR

        tokenizer = AutoTokenizer.from_pretrained(ZOO_DIR / "tokenizer")
        return [("tiny mixtral (random)", HookedMoE.from_hf(tiny_model("mixtral", vocab_size=len(tokenizer)), tokenizer))]
    return [(name, HookedMoE.from_pretrained(name, dtype=torch.float32)) for name in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["moelens/mixtral-tiny", "moelens/olmoe-deep"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    tasks = {"sst2": {"data": RECORDS}, "arithmetic": {"limit": 4}} if args.smoke else {
        "sst2": {"limit": 200}, "sst5": {"limit": 100}, "arithmetic": {"limit": 100}}
    repeats = 1 if args.smoke else args.repeats
    rows = []
    for model_name, hooked in _models(args.smoke, args.models):
        backends = {"HookedMoE": hooked, "NNsightMoE": NNsightMoE.from_hf(hooked.hf_model, tokenizer=hooked.tokenizer)}
        for model in backends.values():  # warm-up: first-call costs (nnsight compiles its trace code) are not timed
            moelens.evaluate(model, "sst2", data=RECORDS[:2], progress=False)
        for task, data in tasks.items():
            for label, interventions in INTERVENTIONS.items():
                times: dict[str, list[float]] = {name: [] for name in backends}
                results = {}
                for _ in range(repeats):
                    for name, model in backends.items():
                        start = time.process_time()
                        results[name] = moelens.evaluate(model, task, interventions=interventions, progress=False, **data)
                        times[name].append(time.process_time() - start)
                ref, got = results["HookedMoE"], results["NNsightMoE"]
                agree = sum(a == b for a, b in zip(ref.predictions, got.predictions, strict=True)) / ref.n
                diff = "-" if ref.scores is None else f"{float((ref.scores - got.scores).abs().max()):.3g}"
                same_text = "-" if ref.outputs is None else str(ref.outputs == got.outputs)
                hooked_s, nns_s = (statistics.median(times[name]) for name in backends)
                rows.append((model_name, task, label, str(ref.n), f"{ref.accuracy:.3f}", f"{got.accuracy:.3f}", f"{agree:.3f}",
                             diff, same_text, f"{hooked_s:.2f}", f"{nns_s:.2f}", f"{nns_s / hooked_s:.2f}x"))
                if agree != 1.0 or same_text == "False":
                    raise SystemExit(f"the backends disagree on {model_name} / {task} / {label}")
    print_table(f"moelens.evaluate through both backends (1 thread, median CPU s of {repeats})", rows,
                ("model", "task", "intervention", "n", "acc HookedMoE", "acc NNsightMoE", "agreement", "max|d score|",
                 "same texts", "CPU s HookedMoE", "CPU s NNsightMoE", "ratio"))
    print("\nidentical predictions through both backends")


if __name__ == "__main__":
    main()
