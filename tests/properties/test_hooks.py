"""Hook-point invariants: no-op hooks change nothing, every writable hook changes the output, the
cache matches the hook table, hooks never outlive their scope."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from moelens.architectures import resolve
from moelens.names import HOOK_TABLE, parse_hook_name

from ..models import PROPERTY_FAMILIES, token_batch, wrapped

families = st.sampled_from(PROPERTY_FAMILIES)


def _axis_sizes(model, batch, pos):
    return {"batch": batch, "pos": pos, "d_model": model.cfg.d_model, "n_experts": model.cfg.n_experts, "k": model.cfg.top_k}


@given(family=families, seed=st.integers(0, 1000))
def test_identity_hooks_change_nothing(family, seed):
    model = wrapped(family)
    ids = token_batch(seed)
    with torch.no_grad():
        reference = model(ids)
        logits = model.run_with_hooks(ids, fwd_hooks=[(lambda name: True, lambda x, hook: x)])
        in_place_noop = model.run_with_hooks(ids, fwd_hooks=[(lambda name: "router_scores" not in name, lambda x, hook: x.mul_(1))])
    assert torch.equal(logits, reference)
    assert torch.equal(in_place_noop, reference)


def _edit(name: str, model, seed: int):
    """A hook that really changes the activation at ``name``."""
    suffix = parse_hook_name(name)[1]
    n_experts = model.cfg.n_experts

    def fn(x, hook):
        generator = torch.Generator().manual_seed(seed)
        if suffix == "hook_topk_indices":
            return (x + 1) % n_experts
        if suffix == "hook_topk_weights":
            return x * 3 + 0.5
        if suffix == "hook_router_logits":
            # move every token's mass onto its currently least likely expert
            bump = torch.zeros_like(x).scatter_(-1, x.argmin(-1, keepdim=True), 100.0)
            return x + bump
        return x + torch.randn(x.shape, generator=generator, dtype=x.dtype) * (x.std() + 1)

    return fn


@pytest.mark.parametrize("family", PROPERTY_FAMILIES)
def test_every_writable_hook_changes_the_output(family):
    model = wrapped(family)
    ids = token_batch(1)
    with torch.no_grad():
        reference = model(ids)
        for name in model.hook_names:
            suffix = parse_hook_name(name)[1]
            if not HOOK_TABLE[suffix].writable:
                continue
            logits = model.run_with_hooks(ids, fwd_hooks=[(name, _edit(name, model, 0))])
            assert not torch.equal(logits, reference), f"writing to {name} changed nothing"


@pytest.mark.parametrize("family", PROPERTY_FAMILIES)
def test_in_place_router_edits_reroute(family):
    model = wrapped(family)
    ids = token_batch(2)
    layer = model.cfg.moe_layers[-1]
    names = [f"blocks.{layer}.moe.hook_topk_indices", f"blocks.{layer}.moe.hook_router_logits"]

    def bump_in_place(x, hook):
        x[..., 0] += 1000.0  # no return value: the edit happens in place

    with torch.no_grad():
        _, clean = model.run_with_cache(ids, names_filter=names)
        _, edited = model.run_with_cache(ids, names_filter=names, fwd_hooks=[(names[1], bump_in_place)])
    module = resolve(resolve(model.layers[layer], model.spec.moe_block), model.spec.router)
    bumped = clean[names[1]].clone()
    bumped[..., 0] += 1000.0
    expected = model.spec.routing.route(bumped.reshape(-1, model.cfg.n_experts), module).index
    assert not torch.equal(edited[names[0]], clean[names[0]])
    assert torch.equal(edited[names[0]].reshape(expected.shape), expected)


@given(family=families, expert=st.integers(0, 3), seed=st.integers(0, 100))
def test_router_logit_edit_reroutes_by_the_family_rule(family, expert, seed):
    model = wrapped(family)
    layer = model.cfg.moe_layers[0]
    ids = token_batch(seed)
    names = [f"blocks.{layer}.moe.hook_topk_indices", f"blocks.{layer}.moe.hook_topk_weights", f"blocks.{layer}.moe.hook_router_logits"]

    def silence(x, hook):
        return x.index_fill(-1, torch.tensor([expert]), float("-inf"))

    with torch.no_grad():
        _, cache = model.run_with_cache(ids, names_filter=names, fwd_hooks=[(names[2], silence)])
    index = cache[names[0]]
    assert not bool((index == expert).any()), "an expert with logit -inf was still selected"
    router = model.hook_point(names[2])  # the recomputation uses the spec's own rule
    module = resolve(resolve(model.layers[layer], model.spec.moe_block), model.spec.router)
    expected = model.spec.routing.route(cache[names[2]].reshape(-1, model.cfg.n_experts), module)
    assert torch.equal(index.reshape(-1, index.shape[-1]), expected.index)
    assert router.name == names[2]


@pytest.mark.parametrize("family", PROPERTY_FAMILIES)
def test_cache_keys_and_shapes_match_the_hook_table(family):
    model = wrapped(family)
    batch, pos = 2, 5
    with torch.no_grad():
        _, cache = model.run_with_cache(token_batch(3, batch, pos))
    sizes = _axis_sizes(model, batch, pos)
    assert set(cache) == set(model.hook_names)
    for name, tensor in cache.items():
        spec = HOOK_TABLE[parse_hook_name(name)[1]]
        assert tuple(tensor.shape) == tuple(sizes[axis] for axis in spec.shape.split()), name
    assert cache.topk_mask().sum(-1).eq(model.cfg.top_k).all()
    dense = cache.gate_weights()
    assert torch.equal(dense.ne(0), cache.topk_mask() & cache.topk_weights().ne(0).any(-1, keepdim=True))


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3"])
def test_hooks_are_removed_on_exit_and_on_exceptions(family):
    model = wrapped(family)
    calls = []

    def record(x, hook):
        calls.append(hook.name)

    with model.hooks([("blocks.0.hook_resid_pre", record)]):
        model(token_batch(0))
    assert calls and not model.hook_point("blocks.0.hook_resid_pre").active

    def boom(x, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        model.run_with_hooks(token_batch(0), fwd_hooks=[("blocks.1.hook_resid_post", record), ("blocks.1.hook_resid_post", boom)])
    assert not any(hp.active for hp in model.hook_dict.values())
    before = len(calls)
    model(token_batch(0))
    assert len(calls) == before


@pytest.mark.parametrize("family", PROPERTY_FAMILIES)
def test_start_and_stop_at_layer_compose_to_the_full_forward(family):
    model = wrapped(family)
    ids = token_batch(5)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding on row 0
    with torch.no_grad():
        full, cache = model.run_with_cache(ids, attention_mask=mask, names_filter=lambda n: "resid" in n)
        for layer in range(model.cfg.n_layers):
            resid = model(ids, attention_mask=mask, stop_at_layer=layer)
            assert torch.equal(resid, cache[f"blocks.{layer}.hook_resid_pre"])
            resumed = model(resid, attention_mask=mask, start_at_layer=layer)
            assert torch.equal(resumed, full)
        final = model(ids, attention_mask=mask, stop_at_layer=model.cfg.n_layers)
        assert torch.equal(final, cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"])


@pytest.mark.parametrize("family", PROPERTY_FAMILIES)
def test_stream_edits_reach_the_rest_of_the_layer(family):
    """An edit of attn_out, resid_mid or mlp_out is what the rest of the forward sees: the residual
    identities still hold, bit for bit, on the edited values (so writing resid_mid also moves the skip
    connection, not only the pre-MLP norm's input). None of these families scales its branches."""
    model = wrapped(family)
    assert model.spec.residual.additive and model.spec.residual.branch_scale is None
    ids = token_batch(4)
    layer = model.cfg.n_layers - 1
    names = [f"blocks.{layer}.hook_{s}" for s in ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")]

    def shift(x, hook):
        return x * 0.5 + 1.0

    def shift_in_place(x, hook):
        x.mul_(0.5).add_(1.0)

    with torch.no_grad():
        _, clean = model.run_with_cache(ids, names_filter=names)
        for target in names[1:4]:
            for edit in (shift, shift_in_place):
                _, cache = model.run_with_cache(ids, names_filter=names, fwd_hooks=[(target, edit)])
                pre, attn, mid, mlp, post = (cache[name] for name in names)
                assert torch.equal(cache[target], shift(clean[target], None)), (target, edit.__name__)
                if target != names[2]:
                    assert torch.equal(mid, pre + attn), (target, edit.__name__)
                assert torch.equal(post, mid + mlp), (target, edit.__name__)


@pytest.mark.parametrize("family", ["mixtral", "llama4_text"])
def test_backward_hook_on_resid_mid_fires_and_changes_no_value(family):
    model = wrapped(family)
    ids = token_batch(5)
    seen = []
    with torch.no_grad():
        reference = model(ids)
    logits = model.run_with_hooks(ids, bwd_hooks=[("blocks.0.hook_resid_mid", lambda g, hook: seen.append(g))])
    assert torch.equal(logits.detach(), reference)
    logits[:, -1].sum().backward()
    assert len(seen) == 1 and seen[0].shape == (*ids.shape, model.cfg.d_model) and bool(seen[0].ne(0).any())


def test_stream_gradients_match_finite_differences():
    """incl_bwd gradients of the stream hooks (resid_mid goes through a copy into HF's tensor) against
    central differences of the same edit, in float64 with eager experts (O(eps^2) = 1e-8 error)."""
    from moelens import HookedMoE
    from moelens.testing import tiny_model

    model = HookedMoE.from_hf(tiny_model("mixtral", experts_implementation="eager").double())
    ids = token_batch(6, batch=1, pos=5)

    def metric(logits):
        return logits[0, -1, 7]

    _, cache = model.run_with_cache(ids, incl_bwd=True, metric=metric)
    for layer in range(model.cfg.n_layers):
        assert torch.equal(cache[f"blocks.{layer}.hook_mlp_out_grad"], cache[f"blocks.{layer}.hook_resid_post_grad"])
    for name in ("blocks.0.hook_resid_mid", "blocks.1.hook_resid_mid", "blocks.1.hook_attn_out", "hook_embed"):
        grad = cache[name + "_grad"]
        direction = torch.randn(grad.shape, generator=torch.Generator().manual_seed(1), dtype=grad.dtype)
        eps = 1e-4

        def at(step, name=name, direction=direction):
            with torch.no_grad():
                return float(metric(model.run_with_hooks(ids, [(name, lambda x, hook: x + step * direction)])))

        finite = (at(eps) - at(-eps)) / (2 * eps)
        assert float((grad * direction).sum()) == pytest.approx(finite, rel=1e-4, abs=1e-6), name
