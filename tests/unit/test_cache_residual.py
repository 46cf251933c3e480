"""TransformerLens cache helpers against HF's own computation: cache[name, layer], get_act_name,
accumulated_resid / decompose_resid / apply_ln_to_stack / logit_attrs, to, remove_batch_dim."""

from __future__ import annotations

import functools

import pytest
import torch

from moelens import HookedMoE
from moelens.errors import InvalidInputError, UnknownHookError, UnsupportedArchitectureError
from moelens.testing import tiny_model
from moelens.utils import get_act_name

FAMILIES = ("mixtral", "minimax", "qwen2_moe", "deepseek_v3", "gpt_oss", "granitemoe", "phimoe", "llama4_text")


@functools.lru_cache(maxsize=None)
def _run(family: str):
    model = HookedMoE.from_hf(tiny_model(family, 5))
    ids = torch.randint(3, 97, (2, 7), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids)
    return model, logits, cache


def _unembed(model, normed):
    """HF's LM head on a normalised stream, with the family's logit post-processing."""
    return model.spec.logits_from_head(model.hf_model.lm_head(normed), model.hf_model.config)


def _tolerance(tensor):
    return 1e-5 * (1 + float(tensor.abs().max()))  # fp32 rounding of a d_model=32 dot product


@pytest.mark.parametrize("family", FAMILIES)
def test_accumulated_resid_with_ln_reproduces_the_logits(family):
    model, logits, cache = _run(family)
    with torch.no_grad():
        stack = cache.accumulated_resid(apply_ln=True)
        final = stack[-1]
        if model.spec.norm == "layer":  # a LayerNorm's bias belongs to no component
            final = final + model.final_norm.bias
        assert torch.allclose(final, cache["ln_final.hook_normalized"], atol=1e-5)
        assert torch.allclose(_unembed(model, final), logits, atol=_tolerance(logits))
    assert stack.shape == (model.cfg.n_layers + 1, 2, 7, model.cfg.d_model)


@pytest.mark.parametrize("family", FAMILIES)
def test_decompose_resid_sums_to_the_final_stream(family):
    model, logits, cache = _run(family)
    if not model.spec.residual.additive:
        with pytest.raises(UnsupportedArchitectureError, match="normalised stream"):
            cache.decompose_resid()
        return
    parts, labels = cache.decompose_resid(return_labels=True)
    assert len(labels) == 1 + 2 * model.cfg.n_layers and labels[0] == "embed"
    # summed in the forward's own order, the components are HF's adds: bit for bit
    assert torch.equal(functools.reduce(torch.add, parts), cache["resid_post", -1])
    layer = model.cfg.n_layers - 1
    at_mlp = cache.decompose_resid(layer=layer, mlp_input=True)
    assert torch.equal(functools.reduce(torch.add, at_mlp), cache["resid_mid", layer])
    with torch.no_grad():
        attrs = cache.logit_attrs(parts[:, :, -1], 11, incorrect_tokens=12, pos_slice=-1)
    expected = logits[:, -1, 11] - logits[:, -1, 12]
    if model.spec.norm == "layer":
        head = model.hf_model.lm_head.weight
        expected = expected - model.spec.logits_from_head(model.final_norm.bias @ (head[11] - head[12]), model.hf_model.config)
    assert attrs.shape == (len(labels), 2)
    assert torch.allclose(attrs.sum(0), expected, atol=_tolerance(logits))


@pytest.mark.parametrize("family", ["mixtral", "phimoe"])
def test_apply_ln_at_a_layer_uses_that_layers_norm(family):
    model, _, cache = _run(family)
    layer = 1
    block = model.layers[layer]
    with torch.no_grad():
        pre = cache.apply_ln_to_stack(cache["resid_pre", layer][None], layer)[0]
        mid = cache.apply_ln_to_stack(cache["resid_mid", layer][None], layer, mlp_input=True)[0]
        bias = (lambda norm: norm.bias) if model.spec.norm == "layer" else (lambda norm: 0)
        assert torch.allclose(pre + bias(block.input_layernorm), block.input_layernorm(cache["resid_pre", layer]), atol=1e-5)
        assert torch.allclose(mid + bias(block.post_attention_layernorm), cache["blocks.1.moe.hook_in"], atol=1e-5)


def test_short_names_and_negative_layers():
    model, _, cache = _run("deepseek_v3")
    assert torch.equal(cache["resid_post", -1], cache["blocks.2.hook_resid_post"])
    assert torch.equal(cache["router_logits", 1], cache["blocks.1.moe.hook_router_logits"])
    assert torch.equal(cache["embed"], cache["hook_embed"]) and "embed" in cache and "pattern" not in cache
    assert torch.equal(cache["normalized"], cache["ln_final.hook_normalized"])
    with pytest.raises(UnknownHookError, match="blocks.0.moe.hook_router_logits"):
        cache["router_logits", 0]  # layer 0 of this model is dense
    assert cache.stack_activation("shared_out").shape == (2, 2, 7, model.cfg.d_model)
    assert torch.equal(cache.stack_activation("mlp_out", layer=2)[1], cache["mlp_out", 1])
    assert [get_act_name(n, 3) for n in ("resid_pre", "attn_out", "mlp_out", "topk_weights", "moe_in")] == [
        "blocks.3.hook_resid_pre", "blocks.3.hook_attn_out", "blocks.3.hook_mlp_out",
        "blocks.3.moe.hook_topk_weights", "blocks.3.moe.hook_in"]
    assert get_act_name("resid_pre5") == "blocks.5.hook_resid_pre"
    assert get_act_name("blocks.0.hook_resid_pre") == "blocks.0.hook_resid_pre"
    with pytest.raises(InvalidInputError, match="attention internals"):
        get_act_name("pattern", 0)
    with pytest.raises(InvalidInputError, match="per layer"):
        get_act_name("resid_pre")
    with pytest.raises(UnknownHookError, match="Did you mean"):
        get_act_name("resid_psot", 0)
    assert set(name for name in model.hook_names) >= {get_act_name(n, 1) for n in ("resid_pre", "resid_mid", "resid_post")}


def test_to_and_remove_batch_dim():
    model = HookedMoE.from_hf(tiny_model("mixtral"))
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.tensor([[4, 5, 6]]))
        full = cache.accumulated_resid(apply_ln=True)
        assert cache.to("cpu") is cache
        cache.remove_batch_dim()
        assert cache["resid_post", 0].shape == (3, model.cfg.d_model)
        assert torch.equal(cache.accumulated_resid(apply_ln=True), full[:, 0])
    _, two = model.run_with_cache(torch.tensor([[4, 5], [6, 7]]))
    with pytest.raises(InvalidInputError, match="batch of one"):
        two.remove_batch_dim()
