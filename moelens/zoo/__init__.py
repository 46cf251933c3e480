"""The moelens model zoo: small MoE language models trained by this project.

Each model lives in ``moelens/zoo/<name>/`` as a standard HF directory (config.json,
model.safetensors, tokenizer files, README.md training card, train_log.json), so it loads with
``AutoModelForCausalLM.from_pretrained(dir)`` / ``AutoTokenizer.from_pretrained(dir)`` offline.
``resolve("moelens/<name>")`` maps the zoo name to that directory. ``python -m zoo_training.train`` (repository only)
reproduces them (see each card for the exact command).
"""

from __future__ import annotations

import pathlib

ZOO_DIR = pathlib.Path(__file__).resolve().parent

ZOO_PREFIX = "moelens/"

ZOO_MODELS: dict[str, str] = {
    "mixtral-tiny": (
        "MixtralForCausalLM, 4 layers, d_model 160, 8 experts softmax top-2 (always renormalised), "
        "BPE 4096, 5.0M params (bf16, 10 MB), trained ~11 min on 1 CPU thread on sentiment/MMLU/math prompts"
    ),
    "qwen2moe-tiny": (
        "Qwen2MoeForCausalLM, 4 layers, d_model 160, 8 experts softmax top-2 without renormalisation "
        "(norm_topk_prob=False) plus a sigmoid-gated shared expert, 5.5M params (bf16, 11 MB), same tokenizer and data"
    ),
    "olmoe-deep": (
        "OlmoeForCausalLM, 8 layers, d_model 192, 16 fine-grained experts (intermediate 80) softmax top-4 without "
        "renormalisation, 7.9M params (bf16, 16 MB), same tokenizer; trained 4.4 min on an H200 (70M tokens): "
        "held-out arithmetic and sentiment skills, no dead expert"
    ),
}

DEFAULT_MODEL = "moelens/mixtral-tiny"


def resolve(name: str) -> pathlib.Path | None:
    """Map ``"moelens/<name>"`` to its packaged directory; None if ``name`` is not a zoo model."""
    if not isinstance(name, str) or not name.startswith(ZOO_PREFIX):
        return None
    short = name[len(ZOO_PREFIX):]
    if short not in ZOO_MODELS:
        return None
    path = ZOO_DIR / short
    return path if (path / "config.json").exists() else None


__all__ = ["DEFAULT_MODEL", "ZOO_DIR", "ZOO_MODELS", "ZOO_PREFIX", "resolve"]
