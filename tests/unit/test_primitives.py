"""The primitives analyses build on: route, unembed, backward hooks and gradients in the cache, the
per-call context of hook functions."""

import pytest
import torch

from moelens import HookedMoE, InvalidInputError, Patch, Perturb
from moelens.hook_points import CallContext
from moelens.names import moe_name
from moelens.testing import TINY_FAMILIES, tiny_model

from ..models import token_batch, wrapped

ALL_FAMILIES = (*TINY_FAMILIES, "deepseek")


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_unembed_of_the_final_residual_is_the_forward_bit_for_bit(family):
    model = wrapped(family)
    ids = token_batch(3, batch=2, pos=5)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        for kwargs in ({}, {"attention_mask": mask}):
            final = model(ids, stop_at_layer=model.cfg.n_layers, **kwargs)  # residual entering the final norm
            assert final.shape == (2, 5, model.cfg.d_model)
            assert torch.equal(model.unembed(final), model(ids, **kwargs))


def test_unembed_applies_the_family_logit_scaling():
    hf = tiny_model("granitemoe", logits_scaling=4.0)
    model = HookedMoE.from_hf(hf)
    ids = token_batch(1)
    with torch.no_grad():
        final = model(ids, stop_at_layer=model.cfg.n_layers)
        assert torch.equal(model.unembed(final), model(ids))
        unscaled = hf.lm_head(hf.model.norm(final))
        assert torch.allclose(model.unembed(final) * 4.0, unscaled)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_route_is_what_a_forward_does_after_a_router_edit(family):
    model = wrapped(family)
    ids = token_batch(4)
    names = [moe_name(layer, s) for layer in model.cfg.moe_layers for s in ("hook_topk_indices", "hook_topk_weights")]
    reroute = [(moe_name(layer, "hook_router_logits"), lambda x, hook: x.clone()) for layer in model.cfg.moe_layers]
    with torch.no_grad():
        _, clean = model.run_with_cache(ids, [moe_name(layer, "hook_router_logits") for layer in model.cfg.moe_layers])
        _, rerouted = model.run_with_cache(ids, names, fwd_hooks=reroute)
    for layer in model.cfg.moe_layers:
        index, weights = model.route(layer, clean[moe_name(layer, "hook_router_logits")])
        assert torch.equal(index, rerouted[moe_name(layer, "hook_topk_indices")])
        expected = rerouted[moe_name(layer, "hook_topk_weights")]
        assert torch.equal(weights.to(expected.dtype), expected)


def test_route_takes_any_leading_shape_and_refuses_bad_input():
    model = wrapped("deepseek_v3")
    logits = torch.randn(3, 5, model.cfg.n_experts, generator=torch.Generator().manual_seed(0))
    index, weights = model.route(1, logits)
    flat_index, flat_weights = model.route(1, logits.reshape(15, -1))
    assert index.shape == weights.shape == (3, 5, model.cfg.top_k)
    assert torch.equal(index.reshape(15, -1), flat_index) and torch.equal(weights.reshape(15, -1), flat_weights)
    with pytest.raises(InvalidInputError, match="not an MoE layer"):
        model.route(0, logits)
    with pytest.raises(InvalidInputError, match="n_experts=8"):
        model.route(1, logits[..., :3])


# -- gradients ---------------------------------------------------------------------------------------


def _smooth_model(family: str, **overrides) -> HookedMoE:
    """float64 (eager experts) with softened routers: gradients through routing are not saturated."""
    model = HookedMoE.from_hf(tiny_model(family, experts_implementation="eager", **overrides).double())
    with torch.no_grad():
        for layer in model.cfg.moe_layers:
            model._routers[layer].weight.mul_(0.1)
    return model


def _metric(logits):
    return logits[:, -1].log_softmax(-1)[:, 11].sum()


# Every expert selected (k = n_experts): no top-k choice anywhere, so the output is smooth in every
# activation. With k < n_experts only the last MoE layer's routing is perturbed, and the test checks
# that the perturbation stays inside one piece of the piecewise-constant top-k choice.
FD_CASES = [
    ("mixtral", {"num_experts_per_tok": 4}, ("logits", "weights", "out", "resid")),
    ("qwen2_moe", {"num_experts_per_tok": 4}, ("logits", "weights", "out", "resid")),
    ("mixtral", {}, ("logits", "weights")),
    ("deepseek_v3", {}, ("logits", "weights")),
    ("gpt_oss", {}, ("logits", "weights")),
]


@pytest.mark.parametrize(("family", "overrides", "which"), FD_CASES)
def test_cached_gradients_equal_finite_differences(family, overrides, which):
    model = _smooth_model(family, **overrides)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    last = model.cfg.moe_layers[-1]
    candidates = {
        "logits": (moe_name(last, "hook_router_logits"), 1e-3),
        "weights": (moe_name(last, "hook_topk_weights"), 1e-3),
        "out": (moe_name(model.cfg.moe_layers[0], "hook_out"), 1e-4),
        "resid": ("blocks.0.hook_resid_pre", 1e-4),
    }
    names = [candidates[key][0] for key in which]
    indices = [moe_name(layer, "hook_topk_indices") for layer in model.cfg.moe_layers]
    logits, cache = model.run_with_cache(ids, names + indices, incl_bwd=True, metric=_metric)
    assert not logits.requires_grad
    assert set(cache) == set(names + indices + [name + "_grad" for name in names])  # no gradient of indices
    generator = torch.Generator().manual_seed(0)
    for key in which:
        name, eps = candidates[key]
        direction = torch.randn(cache[name].shape, generator=generator, dtype=cache[name].dtype)

        def run(delta, name=name):
            with torch.no_grad():
                out, seen = model.run_with_cache(ids, indices, fwd_hooks=[(name, lambda x, hook: x + delta)])
            for index in indices:  # the same selected set everywhere (slots may be ordered differently)
                assert torch.equal(seen[index].sort(-1).values, cache[index].sort(-1).values)
            return float(_metric(out))

        finite = (run(eps * direction) - run(-eps * direction)) / (2 * eps)
        analytic = float((cache[name + "_grad"] * direction).sum())
        # Routing runs in float32 inside a float64 model: the differences carry ~1e-7 relative noise.
        assert analytic == pytest.approx(finite, rel=2e-2, abs=1e-6), name
        assert abs(analytic) > 1e-5, name  # the comparison means something


def test_backward_hooks_see_the_gradient_and_can_replace_it():
    model = _smooth_model("mixtral")
    ids = torch.tensor([[5, 6, 7, 8]])
    name = "blocks.1.hook_resid_pre"
    _, cache = model.run_with_cache(ids, [name, "blocks.0.hook_resid_pre"], incl_bwd=True, metric=_metric)
    seen = {}

    def keep(grad, hook):
        seen[hook.name] = grad.clone()

    logits = model.run_with_hooks(ids, bwd_hooks=[(name, keep), ("blocks.0.hook_resid_pre", keep)])
    _metric(logits).backward()
    assert torch.allclose(seen[name], cache[name + "_grad"], rtol=1e-10, atol=1e-12)
    assert torch.allclose(seen["blocks.0.hook_resid_pre"], cache["blocks.0.hook_resid_pre_grad"], rtol=1e-10, atol=1e-12)
    model.zero_grad()
    # Zeroing the gradient at layer 1 cuts every path from layer 0 through it; the skip path stays
    # (layer 0's attention and MoE block write into the residual that layer 1 receives).
    logits = model.run_with_hooks(ids, bwd_hooks=[(name, lambda g, hook: torch.zeros_like(g)), ("blocks.0.hook_resid_pre", keep)])
    _metric(logits).backward()
    assert torch.equal(seen["blocks.0.hook_resid_pre"], torch.zeros_like(seen["blocks.0.hook_resid_pre"]))
    model.zero_grad()


def test_gradients_leave_parameters_alone_and_work_with_frozen_weights():
    model = _smooth_model("mixtral")
    ids = torch.tensor([[5, 6, 7, 8]])
    name = "blocks.1.moe.hook_topk_weights"
    _, trained = model.run_with_cache(ids, name, incl_bwd=True, metric=_metric)
    assert all(p.grad is None for p in model.parameters())
    model.requires_grad_(False)
    with torch.no_grad():  # incl_bwd turns autograd on for its own forward
        _, frozen = model.run_with_cache(ids, name, incl_bwd=True, metric=_metric)
    assert torch.allclose(frozen[name + "_grad"], trained[name + "_grad"], rtol=1e-12, atol=0)


def test_backward_hooks_refuse_activations_without_a_gradient():
    model = wrapped("mixtral")
    with pytest.raises(InvalidInputError, match="carries no gradient"):
        model.run_with_hooks(token_batch(0), bwd_hooks=[("blocks.0.moe.hook_topk_indices", lambda g, hook: None)])
    with pytest.raises(InvalidInputError, match="scalar"):
        model.run_with_cache(token_batch(0), "blocks.0.hook_resid_pre", incl_bwd=True, metric=lambda logits: logits[0, -1])
    assert not model.hook_point("blocks.0.moe.hook_topk_indices").active


# -- per-call context --------------------------------------------------------------------------------


def test_hook_functions_see_the_call_mask_and_a_scratch_emptied_even_on_errors():
    model = wrapped("mixtral")
    ids = token_batch(2, batch=2, pos=4)
    mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])
    seen = []

    def store(x, hook):
        seen.append(hook.call.attention_mask)
        hook.call.scratch[hook.name] = x
        hook.ctx["n"] = hook.ctx.get("n", 0) + 1

    def fail(x, hook):
        assert hook.call.scratch and hook.ctx == {}
        raise RuntimeError("boom")

    with torch.no_grad():
        model.run_with_hooks(ids, [("blocks.0.moe.hook_in", store)], attention_mask=mask)
        assert torch.equal(seen[0], mask) and model.current_attention_mask is None
        assert model.hook_point("blocks.0.moe.hook_in").ctx == {}
        with pytest.raises(RuntimeError, match="boom"):
            model.run_with_hooks(ids, [("blocks.0.moe.hook_in", store), ("blocks.0.moe.hook_out", fail)])
    point = model.hook_point("blocks.0.moe.hook_in")
    assert point.ctx == {} and point.call.scratch == {} and point.call.attention_mask is None
    assert isinstance(point.call, CallContext)


def test_run_moe_block_gives_hooks_its_mask():
    model = wrapped("mixtral")
    mask = torch.tensor([[1, 1, 0]])
    seen = []
    model.run_moe_block(0, torch.randn(1, 3, 32), [("blocks.0.moe.hook_out", lambda x, hook: seen.append(hook.call.attention_mask))], attention_mask=mask)
    assert torch.equal(seen[0], mask)


def test_equal_patches_hash_equal():
    a, b = Patch("blocks.0.moe.hook_out", torch.zeros(4)), Patch("blocks.0.moe.hook_out", torch.zeros(4))
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert hash(Perturb(0, [1, 2])) == hash(Perturb(0, (1, 2)))
