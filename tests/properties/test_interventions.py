"""Intervention invariants (hypothesis) on the four routing styles: softmax, sigmoid+groups,
top-k-then-softmax, and the remote DeepSeek-MoE layout."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from moelens import Ablate, Force, Patch, Perturb, Scale
from moelens.interventions import from_dict

from ..models import token_batch, wrapped

FAMILIES = ("mixtral", "qwen2_moe", "deepseek_v3", "gpt_oss")
families = st.sampled_from(FAMILIES)


def _names(model, layer, *suffixes):
    return [f"blocks.{layer}.moe.{suffix}" for suffix in suffixes]


@given(family=families, seed=st.integers(0, 50), expert=st.integers(0, 3))
def test_noop_interventions_change_nothing(family, seed, expert):
    model = wrapped(family)
    ids = token_batch(seed)
    with torch.no_grad():
        reference = model(ids)
        for noop in ([], [Scale("all", expert, factor=1.0)], [Perturb("all", "all", magnitude=0.0)], [Scale("all", "all", 1.0, on="weights")]):
            assert torch.equal(model.run_with_interventions(ids, noop), reference), noop


@given(family=families, seed=st.integers(0, 50), expert=st.integers(0, 3), position=st.sampled_from([None, -1, 0, slice(1, 4)]))
def test_ablate_route_removes_the_expert_and_force_keeps_it(family, seed, expert, position):
    model = wrapped(family)
    ids = token_batch(seed)
    layer = model.cfg.moe_layers[-1]
    index_name = f"blocks.{layer}.moe.hook_topk_indices"
    with torch.no_grad():
        _, clean = model.run_with_cache(ids, names_filter=index_name)
        _, ablated = model.run_with_cache(ids, names_filter=index_name, fwd_hooks=[Ablate(layer, expert, positions=position)])
        _, forced = model.run_with_cache(ids, names_filter=index_name, fwd_hooks=[Force(layer, expert, positions=position)])
    targeted = torch.zeros(ids.shape, dtype=torch.bool)
    targeted[:, (slice(None) if position is None else position)] = True
    has = lambda cache: (cache[index_name] == expert).any(-1)  # noqa: E731
    assert not bool(has(ablated)[targeted].any())
    assert bool(has(forced)[targeted].all())
    # positions outside the selection are untouched at the targeted layer
    assert torch.equal(ablated[index_name][~targeted], clean[index_name][~targeted])
    assert torch.equal(forced[index_name][~targeted], clean[index_name][~targeted])


@given(family=families, seed=st.integers(0, 50))
def test_interventions_leave_earlier_layers_bit_identical(family, seed):
    model = wrapped(family)
    ids = token_batch(seed)
    last = model.cfg.moe_layers[-1]
    earlier = lambda name: any(name.startswith(f"blocks.{layer}.") for layer in range(last))  # noqa: E731
    with torch.no_grad():
        _, clean = model.run_with_cache(ids, names_filter=earlier)
        _, edited = model.run_with_cache(ids, names_filter=earlier, fwd_hooks=[Perturb(last, "all", 3.0, sign=1), Ablate(last, 0)])
    assert clean.keys() == edited.keys() and len(clean) > 0
    for name in clean:
        assert torch.equal(clean[name], edited[name]), name


@pytest.mark.parametrize("family", FAMILIES + ("deepseek",))
def test_batched_expert_sweep_equals_rows_run_separately(family):
    model = wrapped(family)
    n = model.cfg.n_experts
    prompt = token_batch(9, batch=1, pos=7)
    ids = prompt.expand(n, -1)  # one row per target expert
    layer = model.cfg.moe_layers[0]
    index_name = f"blocks.{layer}.moe.hook_topk_indices"
    with torch.no_grad():
        batched, cache = model.run_with_cache(ids, names_filter=index_name, fwd_hooks=[Perturb(layer, torch.arange(n), magnitude=4.0, sign=1)])
        for expert in range(n):
            single, single_cache = model.run_with_cache(prompt, names_filter=index_name, fwd_hooks=[Perturb(layer, expert, magnitude=4.0, sign=1)])
            assert torch.equal(cache[index_name][expert], single_cache[index_name][0])
            torch.testing.assert_close(batched[expert], single[0], rtol=0, atol=1e-5)


ALL = st.one_of(
    st.builds(Perturb, st.sampled_from([0, [0, 1], "all"]), st.sampled_from([1, [0, 2], "all"]), st.floats(0, 3), st.sampled_from([-1, 1]), st.sampled_from([None, -1, [0, 2], slice(1, None)])),
    st.builds(Scale, st.just(0), st.integers(0, 3), st.floats(0.1, 2), st.sampled_from(["logits", "weights"])),
    st.builds(Ablate, st.just("all"), st.integers(0, 3), st.sampled_from(["route", "zero"])),
    st.builds(Force, st.just(1), st.integers(0, 3), positions=st.sampled_from([None, -2])),
)


@given(intervention=ALL)
def test_to_dict_and_repr_round_trip(intervention):
    import json

    assert from_dict(json.loads(json.dumps(intervention.to_dict()))) == intervention
    assert eval(repr(intervention), {"Perturb": Perturb, "Scale": Scale, "Ablate": Ablate, "Force": Force}) == intervention
    assert hash(intervention) == hash(from_dict(intervention.to_dict()))


def test_tensor_selectors_and_patch_round_trip():
    sweep = Perturb(0, torch.tensor([0, 1, 2]))
    assert from_dict(sweep.to_dict()) == sweep
    patch = Patch("blocks.0.moe.hook_out", torch.zeros(4))
    assert from_dict(patch.to_dict()).hook_name == patch.hook_name


@given(family=families, seed=st.integers(0, 20))
def test_patch_with_the_clean_activation_is_a_noop_and_composes_in_order(family, seed):
    model = wrapped(family)
    ids = token_batch(seed)
    layer = model.cfg.moe_layers[0]
    name = f"blocks.{layer}.moe.hook_out"
    with torch.no_grad():
        reference, cache = model.run_with_cache(ids, names_filter=name)
        assert torch.equal(model.run_with_interventions(ids, Patch(name, cache[name])), reference)
        # a later patch wins over an earlier one
        zeroed = model.run_with_interventions(ids, [Patch(name, torch.zeros(model.cfg.d_model)), Patch(name, cache[name])])
    assert torch.equal(zeroed, reference)


def test_intervene_context_and_run_with_hooks_accept_the_same_objects():
    model = wrapped("mixtral")
    ids = token_batch(4)
    with torch.no_grad():
        direct = model.run_with_interventions(ids, [Scale(0, 1, 0.8)])
        via_hooks = model.run_with_hooks(ids, fwd_hooks=[Scale(0, 1, 0.8)])
        with model.intervene(Scale(0, 1, 0.8)):
            inside = model(ids)
        outside = model(ids)
    assert torch.equal(direct, via_hooks) and torch.equal(direct, inside)
    assert not torch.equal(inside, outside)
