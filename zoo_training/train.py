"""Train the moelens zoo models (small MoE LMs with real HF architectures) on CPU or a GPU.

    python -m zoo_training.train --arch mixtral  --out moelens/zoo/mixtral-tiny  --minutes 12 --seed 0
    python -m zoo_training.train --arch qwen2moe --out moelens/zoo/qwen2moe-tiny --minutes 12 --seed 0
    python -m zoo_training.train --arch olmoe --out moelens/zoo/olmoe-deep --device cuda ...   # see its card
    python -m zoo_training.train --arch mixtral --out /tmp/t --steps 3 --tiny      # smoke test

With ``--minutes`` the step count is calibrated from the measured speed during warm-up and recorded
in train_log.json / README.md; ``--steps N`` (the card's reproduce command) replays the same run
(deterministically on CPU). Data: train splits of ../shared/data only (sst2/sst5 train, mmlu
dev+validation, gsm8k train, MATH test items [0, 4000)) plus a synthetic arithmetic task; never
sst2/sst5 validation, mmlu test, gsm8k test or MATH test items [4000, 4500) (the held-out parts).

The pieces live in :mod:`zoo_training`: ``data`` (examples, tokenizer, packing), ``loop``
(command line, model, optimisation), ``metrics`` (held-out evaluation) and ``card`` (README.md).
"""

from __future__ import annotations

from zoo_training.data import (
    DEFAULT_DATA,
    DEFAULT_TOKENIZER,
    arithmetic_problems,
    load_eval_sets,
)
from zoo_training.loop import build_model, main, parse_args

__all__ = ["DEFAULT_DATA", "DEFAULT_TOKENIZER", "arithmetic_problems", "build_model", "load_eval_sets", "main",
           "parse_args"]

if __name__ == "__main__":
    main()
