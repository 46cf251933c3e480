"""The one parser of layer and expert selectors: the same answers and messages everywhere it is used,
integral numbers of any type (a DataFrame cell is numpy's int64) taken as ints, bools refused."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from moelens import HookedMoE, routing_mediation, token_attribution, token_triggers
from moelens._selectors import resolve_expert, resolve_experts, resolve_layer, resolve_layers
from moelens.errors import InvalidInputError

from ..models import wrapped


@pytest.fixture(scope="module")
def model() -> HookedMoE:
    return wrapped("deepseek_v3")  # layer 0 dense: MoE layers [1, 2], 8 experts


def test_selectors_resolve(model):
    assert resolve_layers(model, None) == resolve_layers(model, "all") == [1, 2]
    assert resolve_layers(model, [np.int64(2), 1]) == [2, 1] and all(type(x) is int for x in resolve_layers(model, [np.int64(2)]))
    assert resolve_experts(model, range(2)) == [0, 1] and resolve_expert(model, np.int32(7)) == 7
    assert resolve_layer(model, np.int64(1)) == 1


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda m: resolve_layers(m, [1, 0]), "layers=[1, 0]: layer 0 is not an MoE layer of this model; MoE layers are [1, 2]"),
        (lambda m: resolve_layers(m, [1, 1]), "a layer is given twice"),
        (lambda m: resolve_layers(m, []), "non-empty list"),
        (lambda m: resolve_layers(m, True), "layers=True"),
        (lambda m: resolve_layer(m, [1]), "pass one MoE layer index"),
        (lambda m: resolve_experts(m, [0, 8]), "experts=[0, 8]: expert 8 is out of range; this model has experts 0..7"),
        (lambda m: resolve_expert(m, 1.0), "expert=1.0: pass one expert index"),
        (lambda m: token_attribution(m, torch.tensor([[4, 5, 6]]), layer=True, expert=0), "layer=True"),
        (lambda m: token_triggers(m, torch.tensor([[4, 5, 6]]), [(0, 1)]), "layer 0 is not an MoE layer"),
        (lambda m: routing_mediation(m, torch.tensor([[4, 5]]), torch.tensor([[4, 6]]), experts=[8], progress=False),
         "expert 8 is out of range"),
    ],
)
def test_one_message_for_each_mistake(model, call, fragment):
    with pytest.raises(InvalidInputError) as info:
        call(model)
    assert fragment in str(info.value)


def test_a_dataframe_of_pairs_selects_experts(model):
    frame = pd.DataFrame({"layer": np.array([1, 2]), "expert": np.array([3, 0])})  # numpy ints, as effects.top() gives
    triggers = token_triggers(model, torch.tensor([[4, 5, 6, 7]]), frame, progress=False)
    assert triggers.selection == [(1, 3), (2, 0)]
