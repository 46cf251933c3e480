"""Shared tiny models for tests (built once per session: they are immutable in tests)."""

from __future__ import annotations

import functools

import torch

from moelens import HookedMoE
from moelens.testing import tiny_model

from .parity.deepseek_remote import deepseek_v1_tiny

PROPERTY_FAMILIES = ("mixtral", "qwen2_moe", "deepseek_v3", "gpt_oss", "phimoe", "llama4_text", "deepseek")


@functools.lru_cache(maxsize=None)
def wrapped(family: str, seed: int = 0) -> HookedMoE:
    hf = deepseek_v1_tiny(seed) if family == "deepseek" else tiny_model(family, seed)
    return HookedMoE.from_hf(hf)


def token_batch(seed: int = 0, batch: int = 2, pos: int = 6) -> torch.Tensor:
    return torch.randint(3, 97, (batch, pos), generator=torch.Generator().manual_seed(seed))
