"""driver_effects(perturb_positions=...) through NNsightMoE: the same effects as HookedMoE."""

from __future__ import annotations

import pytest
import torch

from moelens import HookedMoE, driver_effects
from moelens.testing import tiny_model

from .conftest import tokenizer

IDS = torch.randint(3, 97, (4, 7), generator=torch.Generator().manual_seed(5))
MASK = torch.ones_like(IDS)
MASK[1, :3] = 0  # left padding
MASK[3, 5:] = 0  # right padding


@pytest.mark.parametrize("selector", ["last", slice(0, 3), [[3, 4], [3], [0, 1, 2], [4]]])
def test_pushed_positions_give_the_same_effects_through_both_backends(selector):
    from moelens.backends.nnsight import NNsightMoE

    sharp = {"initializer_range": 0.2}  # KLs well above fp32 rounding, so the comparison can fail
    hooked = HookedMoE.from_hf(tiny_model("mixtral", 0, **sharp))
    nns = NNsightMoE.from_hf(tiny_model("mixtral", 0, **sharp), tokenizer=tokenizer())
    kwargs = dict(attention_mask=MASK, perturb_positions=selector, per_input=True, progress=False, perturbation=(4.0, -1))
    ref = driver_effects(hooked, IDS, **kwargs)
    got = driver_effects(nns, IDS, **kwargs)
    assert float(ref.effect.max()) > 1e-4
    torch.testing.assert_close(got.per_input, ref.per_input, rtol=1e-4, atol=1e-6)
