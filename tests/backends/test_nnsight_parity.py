"""NNsightMoE (remote=False) against HookedMoE on tiny random models of five families.

The two backends run the same editing code on the same HF tensors, so caches and logits under
every intervention must be bit-identical (``torch.equal``): no tolerance is needed anywhere here.
"""

from __future__ import annotations

import pytest
import torch

from moelens.errors import UnknownHookError
from moelens.interventions import Ablate, Force, Patch, Perturb, Scale
from tests.models import token_batch

from .conftest import FAMILIES, pair

MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])  # left padding in row 1


@pytest.mark.parametrize("family", FAMILIES)
def test_routing_cache_equals_hookedmoe(family):
    hooked, nns = pair(family)
    ids = token_batch(1)
    ref_logits, ref = hooked.run_with_cache(ids, attention_mask=MASK)
    logits, cache = nns.run_with_cache(ids, attention_mask=MASK)
    assert torch.equal(logits, ref_logits)
    assert set(cache) == set(nns.hook_names) == set(ref)  # the same keys as HookedMoE's, expert/shared outs included
    assert nns.hook_names == hooked.hook_names  # in the same forward order
    for name in cache:
        assert cache[name].shape == ref[name].shape and cache[name].dtype == ref[name].dtype, name
        assert torch.equal(cache[name], ref[name]), name
    assert torch.equal(cache.topk_mask(), ref.topk_mask())
    assert torch.equal(cache.gate_weights(), ref.gate_weights())
    assert torch.equal(cache.attention_mask, ref.attention_mask)
    # the residual helpers read the model through the cache: the same on both backends
    assert torch.equal(cache.accumulated_resid(incl_mid=True, apply_ln=True), ref.accumulated_resid(incl_mid=True, apply_ln=True))
    assert torch.equal(cache.decompose_resid(), ref.decompose_resid())
    assert torch.equal(cache["router_logits", hooked.cfg.moe_layers[-1]], ref["router_logits", hooked.cfg.moe_layers[-1]])


def _interventions(hooked):
    first, last = hooked.cfg.moe_layers[0], hooked.cfg.moe_layers[-1]
    return [
        Perturb(first, 1, magnitude=3.0),
        Perturb("all", [0, 2], magnitude=8.0, sign=1, positions=-1),
        Scale("all", 0, factor=1.5),
        Scale(last, [0, 1], factor=0.3, on="weights"),
        Ablate(first, 2),
        Ablate("all", 1, mode="zero", positions=slice(1, None)),
        Force(first, 3, positions=-1),
        Patch(f"blocks.{first}.moe.hook_out", torch.zeros(hooked.cfg.d_model)),
        [Ablate(first, 0), Scale(last, 3, factor=1.2)],  # composed, in order
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_intervention_gives_hookedmoe_logits(family):
    hooked, nns = pair(family)
    ids = token_batch(2)
    clean = hooked(ids, attention_mask=MASK)
    for intervention in _interventions(hooked):
        ref = hooked.run_with_interventions(ids, intervention, attention_mask=MASK)
        got = nns.run_with_interventions(ids, intervention, attention_mask=MASK)
        assert not torch.equal(ref, clean), f"{intervention} changes nothing on {family}: the test could not fail"
        assert torch.equal(got, ref), f"{intervention} on {family}: max diff {(got - ref).abs().max()}"


def test_logits_and_stop_at_layer():
    hooked, nns = pair("mixtral")
    ids = token_batch(3)
    assert torch.equal(nns(ids), hooked(ids))
    assert torch.equal(nns(ids, stop_at_layer=1), hooked(ids, stop_at_layer=1))
    _, cache = nns.run_with_cache(ids, names_filter=lambda n: "topk" in n, stop_at_layer=2)
    assert sorted(cache) == sorted(n for n in nns.hook_names if "topk" in n)


def test_unknown_hooks_raise_and_shared_out_is_offered():
    hooked, nns = pair("qwen2_moe")
    with pytest.raises(UnknownHookError, match="hook_router_logit"):
        nns.run_with_cache(token_batch(0), names_filter="blocks.0.moe.hook_router_logit")
    patch = Patch("blocks.0.moe.hook_shared_out", torch.zeros(32))
    assert torch.equal(nns.run_with_interventions(token_batch(0), patch), hooked.run_with_interventions(token_batch(0), patch))


def _shift(x, hook):
    return x * 0.5 + 1.0


def _shift_in_place(x, hook):
    x.mul_(0.5).add_(1.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_edits_of_the_stream_and_expert_hooks_give_hookedmoe_logits(family):
    """Writing to every hook point outside the routing (returned or in place) gives HookedMoE's
    logits bit for bit: the embedding, attention and MLP outputs, resid_mid (written into HF's
    tensor), the final norm, expert and shared-expert outputs."""
    hooked, nns = pair(family)
    ids = token_batch(3)
    layer = hooked.cfg.moe_layers[-1]
    suffixes = ("hook_attn_out", "hook_resid_mid", "hook_mlp_out", "moe.hook_expert_out", "moe.hook_shared_out")
    names = ["hook_embed", "ln_final.hook_normalized"] + [f"blocks.{layer}.{s}" for s in suffixes]
    clean = hooked(ids, attention_mask=MASK)
    for name in [n for n in names if n in hooked.hook_names]:
        for edit in (_shift, _shift_in_place):
            ref = hooked.run_with_hooks(ids, [(name, edit)], attention_mask=MASK)
            got = nns.run_with_hooks(ids, [(name, edit)], attention_mask=MASK)
            assert not torch.equal(ref, clean), f"editing {name} changes nothing on {family}: the test could not fail"
            assert torch.equal(got, ref), (name, edit.__name__)
