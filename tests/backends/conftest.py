"""Shared pieces of the nnsight backend tests: tiny models wrapped twice (HookedMoE, NNsightMoE)."""

from __future__ import annotations

import functools

from transformers import AutoTokenizer

from moelens import HookedMoE
from moelens.testing import tiny_model
from moelens.zoo import ZOO_DIR

FAMILIES = ("mixtral", "qwen2_moe", "olmoe", "deepseek_v3", "gpt_oss")


@functools.cache
def tokenizer():
    """Any tokenizer: nnsight's pipeline wants one; these tests pass token ids."""
    return AutoTokenizer.from_pretrained(ZOO_DIR / "tokenizer")


@functools.cache
def pair(family: str, **config):
    """``(HookedMoE, NNsightMoE)`` over two identical copies of the same tiny model (same seed);
    ``config`` overrides go to :func:`moelens.testing.tiny_model` (e.g. ``initializer_range``)."""
    from moelens.backends.nnsight import NNsightMoE

    return (HookedMoE.from_hf(tiny_model(family, **config)),
            NNsightMoE.from_hf(tiny_model(family, **config), tokenizer=tokenizer()))
