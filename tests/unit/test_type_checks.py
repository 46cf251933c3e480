"""The jaxtyping annotations of the core are checked while the tests run (conftest.py)."""

import pytest
import torch
from jaxtyping import TypeCheckError

from moelens.analysis.drivers.result import DriverEffects
from moelens.cache import ActivationCache


def _cache(logits: torch.Tensor) -> ActivationCache:
    return ActivationCache({"blocks.0.moe.hook_router_logits": logits}, (0,), 4, torch.ones(1, 2, dtype=torch.bool))


def test_a_wrong_dtype_is_caught_by_the_annotation():
    assert _cache(torch.zeros(1, 2, 4)).router_logits().shape == (1, 1, 2, 4)
    with pytest.raises(TypeCheckError):
        _cache(torch.zeros(1, 2, 4, dtype=torch.long)).router_logits()  # -> Float[Tensor, "moe_layer batch pos n_experts"]


def test_a_wrong_rank_is_caught_by_the_annotation():
    with pytest.raises(TypeCheckError):
        _cache(torch.zeros(2, 4)).router_logits()  # a 3-D stack where 4 axes are promised


def test_dataclass_fields_are_checked():
    with pytest.raises(TypeCheckError):
        DriverEffects(torch.zeros(2, 3, 4), (0, 1), 4, "exact")  # effect: Float[Tensor, "moe_layer expert"]
