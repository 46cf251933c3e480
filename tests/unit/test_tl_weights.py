"""W_E, W_U, W_router and the experts' W_gate/W_in/W_out against HF's own modules, for every family
of tests/models.py; cfg's TransformerLens fields; model.blocks."""

import pytest
import torch
import torch.nn.functional as F

from moelens import HookedMoE
from moelens.architectures import resolve
from moelens.names import moe_name
from moelens.testing import TINY_FAMILIES, tiny_model

from ..models import token_batch, wrapped

FAMILIES = (*TINY_FAMILIES, "deepseek")


def _experts(model: HookedMoE, layer: int):
    return resolve(resolve(model.layers[layer], model.spec.moe_block), model.spec.experts)


def _hf_expert_out(model: HookedMoE, layer: int, expert: int, x: torch.Tensor) -> torch.Tensor:
    """Expert ``expert`` of ``layer`` on ``x [tokens d_model]``, run by HF's own module code."""
    experts = _experts(model, layer)
    if model.spec.experts_layout == "module_list":
        return experts[expert](x)
    if model.spec.experts_layout == "dense":  # Llama-4: every expert on its own slice of the rows
        n = model.cfg.n_experts
        out = experts(x.repeat(n, 1))  # [n*tokens d] viewed by HF as [n tokens d]
        return out.view(n, x.shape[0], -1)[expert]
    index = torch.full((x.shape[0], 1), expert)
    return experts(x, index, torch.ones(x.shape[0], 1))


def _formula(model: HookedMoE, layer: int, expert: int, x: torch.Tensor) -> torch.Tensor:
    w = model.expert_weights(layer)
    gate = x @ w.W_gate[expert] + (w.b_gate[expert] if w.b_gate is not None else 0)
    up = x @ w.W_in[expert] + (w.b_in[expert] if w.b_in is not None else 0)
    if model.cfg.act_fn == "swiglu_clamped":  # gpt_oss, as its spec states
        experts = _experts(model, layer)
        gate, up = gate.clamp(max=experts.limit), up.clamp(-experts.limit, experts.limit)
        hidden = (up + 1) * gate * torch.sigmoid(gate * experts.alpha)
    else:
        assert model.cfg.act_fn == "silu"
        hidden = F.silu(gate) * up
    return hidden @ w.W_out[expert] + (w.b_out[expert] if w.b_out is not None else 0)


@pytest.mark.parametrize("family", FAMILIES)
def test_expert_weights_reproduce_hf_experts(family):
    model = wrapped(family)
    x = torch.randn(5, model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    for layer in model.cfg.moe_layers:
        w = model.expert_weights(layer)
        n, d, f = model.cfg.n_experts, model.cfg.d_model, model.cfg.d_mlp
        assert w.W_gate.shape == w.W_in.shape == (n, d, f) and w.W_out.shape == (n, f, d)
        for expert in range(n):
            with torch.no_grad():
                expected = _hf_expert_out(model, layer, expert, x)
                got = _formula(model, layer, expert, x)
            # fp32, values O(1), sums over d_mlp <= 48 terms in another order
            assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5), (layer, expert, (got - expected).abs().max())


@pytest.mark.parametrize("family", FAMILIES)
def test_gate_and_up_are_not_swapped(family):
    # silu(a) * b != silu(b) * a: the formula test above would fail with gate and up swapped; check
    # that it can fail by swapping them here.
    model = wrapped(family)
    layer = model.cfg.moe_layers[0]
    w = model.expert_weights(layer)
    x = torch.randn(5, model.cfg.d_model, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = _hf_expert_out(model, layer, 0, x)
        swapped = F.silu(x @ w.W_in[0]) * (x @ w.W_gate[0]) @ w.W_out[0]
    assert not torch.allclose(swapped, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_router_weight_gives_the_router_logits(family):
    model = wrapped(family)
    ids = token_batch(0)
    names = [moe_name(layer, s) for layer in model.cfg.moe_layers for s in ("hook_in", "hook_router_logits")]
    _, cache = model.run_with_cache(ids, names)
    stacked = model.W_router
    assert stacked.shape == (model.cfg.n_layers, model.cfg.d_model, model.cfg.n_experts)
    dense = [layer for layer in range(model.cfg.n_layers) if layer not in model.cfg.moe_layers]
    assert all(bool(stacked[layer].isnan().all()) for layer in dense)
    for layer in model.cfg.moe_layers:
        bias = getattr(model._routers[layer], "bias", None)
        assert torch.equal(stacked[layer], model.router_weight(layer))
        logits = cache[moe_name(layer, "hook_in")] @ stacked[layer] + (bias if bias is not None else 0)
        assert torch.allclose(logits, cache[moe_name(layer, "hook_router_logits")].to(logits.dtype), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "deepseek"])
def test_fused_expert_weights_are_views(family):
    model = HookedMoE.from_hf(tiny_model(family))
    layer = model.cfg.moe_layers[0]
    w = model.expert_weights(layer)
    x = torch.randn(3, model.cfg.d_model)
    before = _hf_expert_out(model, layer, 1, x).detach()
    with torch.no_grad():
        w.W_in[1].mul_(2.0)  # edits HF's parameter through the view
        w.W_out[1].zero_()
    assert not torch.allclose(_hf_expert_out(model, layer, 1, x), before)
    assert bool((_hf_expert_out(model, layer, 1, x) == (w.b_out[1] if w.b_out is not None else 0)).all())
    assert model.router_weight(layer).data_ptr() == model._routers[layer].weight.data_ptr()


@pytest.mark.parametrize("family", ["deepseek_v3", "llama4_text", "gpt_oss"])
def test_model_wide_expert_stacks_are_indexed_by_layer(family):
    model = wrapped(family)
    stacks = {"W_gate": model.W_gate, "W_in": model.W_in, "W_out": model.W_out}
    for name, stacked in stacks.items():
        assert stacked.shape[0] == model.cfg.n_layers
        for layer in range(model.cfg.n_layers):
            if layer in model.cfg.moe_layers:
                assert torch.equal(stacked[layer], getattr(model.expert_weights(layer), name))
            else:
                assert bool(stacked[layer].isnan().all())


def test_module_list_experts_are_a_stacked_copy():
    model = wrapped("deepseek")
    w = model.expert_weights(model.cfg.moe_layers[0])
    first = _experts(model, model.cfg.moe_layers[0])[0].up_proj.weight
    assert torch.equal(w.W_in[0], first.T) and w.W_in.data_ptr() != first.data_ptr()


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3", "gpt_oss"])
def test_embedding_and_unembedding(family):
    model = wrapped(family)
    ids = token_batch(1)
    assert model.W_E is model.hf_model.get_input_embeddings().weight
    assert model.W_U.shape == (model.cfg.d_model, model.cfg.d_vocab)
    last = model.cfg.n_layers - 1
    logits, cache = model.run_with_cache(ids, f"blocks.{last}.hook_resid_post")
    with torch.no_grad():
        recomputed = model.final_norm(cache[f"blocks.{last}.hook_resid_post"]) @ model.W_U
        embedded = model.W_E[ids]
    assert torch.allclose(recomputed, logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(embedded, model.hf_model.get_input_embeddings()(ids))


@pytest.mark.parametrize("family", FAMILIES)
def test_cfg_has_transformer_lens_fields(family):
    model = wrapped(family)
    config, cfg = model.hf_model.config, model.cfg
    assert cfg.n_heads == config.num_attention_heads
    for layer in model.layers:  # d_head: the width each head writes into the output projection
        o_proj = resolve(layer, "self_attn.o_proj")
        if o_proj is not None:
            assert cfg.d_head * cfg.n_heads == o_proj.in_features
    assert cfg.d_mlp == model.expert_weights(cfg.moe_layers[0]).W_in.shape[-1]
    assert cfg.n_ctx == config.max_position_embeddings and cfg.d_vocab == config.vocab_size
    assert cfg.act_fn in ("silu", "swiglu_clamped")
    assert model.blocks is model.layers and len(model.blocks) == cfg.n_layers
