"""The text of every error: it names the bad value and says what to do."""

from __future__ import annotations

import pytest
import torch

from moelens import (
    HookedMoE,
    HookShapeError,
    InvalidInputError,
    ModelLoadError,
    MoelensError,
    ReadOnlyHookError,
    UnknownHookError,
    UnsupportedArchitectureError,
)

from ..models import token_batch, wrapped


def test_dense_model_is_refused_with_the_supported_list():
    from transformers import LlamaConfig, LlamaForCausalLM

    dense = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(UnsupportedArchitectureError) as info:
        HookedMoE.from_hf(dense)
    message = str(info.value)
    assert "model_type 'llama' is not a supported MoE family" in message
    assert "mixtral" in message and "deepseek_v3" in message and "registry.py" in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, MoelensError)


def test_unknown_hook_suggests_close_names_and_is_a_key_error():
    model = wrapped("mixtral")
    with pytest.raises(KeyError) as info:
        model.run_with_hooks(token_batch(0), fwd_hooks=[("blocks.0.moe.hook_router_logit", lambda x, hook: None)])
    assert isinstance(info.value, UnknownHookError)
    message = str(info.value)
    assert message.startswith("unknown hook name 'blocks.0.moe.hook_router_logit'. Did you mean 'blocks.0.moe.hook_router_logits'")
    assert message.endswith("`model.hook_names` lists every hook this model offers.")


def test_shared_hook_is_not_offered_without_shared_experts():
    with pytest.raises(UnknownHookError, match="blocks.0.moe.hook_shared_out"):
        wrapped("mixtral").hook_point("blocks.0.moe.hook_shared_out")


def test_wrong_shape_and_dtype_name_the_hook_and_the_expected_shape():
    model = wrapped("mixtral")
    with pytest.raises(HookShapeError) as info:
        model.run_with_hooks(token_batch(0, 2, 6), fwd_hooks=[("blocks.1.moe.hook_out", lambda x, hook: x[:, :3])])
    assert "on 'blocks.1.moe.hook_out' returned shape (2, 3, 32); expected (2, 6, 32) [batch pos d_model]" in str(info.value)
    with pytest.raises(HookShapeError, match=r"returned dtype torch.float64; expected torch.float32. Return `value.to\(torch.float32\)`"):
        model.run_with_hooks(token_batch(0), fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: x.double())])
    with pytest.raises(HookShapeError, match=r"selected expert 9; expert indices must lie in \[0, 3\]"):
        model.run_with_hooks(token_batch(0), fwd_hooks=[("blocks.0.moe.hook_topk_indices", lambda x, hook: x * 0 + 9)])


def test_router_scores_are_read_only():
    model = wrapped("qwen2_moe")
    with pytest.raises(ReadOnlyHookError, match=r"hook 'blocks.0.moe.hook_router_scores' is read-only .* Edit blocks.0.moe.hook_router_logits"):
        model.run_with_hooks(token_batch(0), fwd_hooks=[("blocks.0.moe.hook_router_scores", lambda x, hook: x * 2)])

    def in_place(x, hook):
        x.zero_()

    with pytest.raises(ReadOnlyHookError, match="edited 'blocks.0.moe.hook_router_scores' in place"):
        model.run_with_hooks(token_batch(0), fwd_hooks=[("blocks.0.moe.hook_router_scores", in_place)])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: m("a text"), "texts were given but this model has no tokenizer"),
        (lambda m: m(torch.tensor([[1, 200]])), r"token id 200 is outside the vocabulary \[0, 96\]"),
        (lambda m: m(torch.rand(2, 3)), "token ids must be integers, got dtype torch.float32"),
        (lambda m: m(torch.tensor([[1, 2]]), attention_mask=torch.ones(1, 3)), r"attention_mask has shape \(1, 3\) but the inputs have shape \(1, 2\)"),
        (lambda m: m(torch.tensor([[1, 2]]), stop_at_layer=7), r"stop_at_layer=7 is out of range; this model takes \[0, 2\]"),
        (lambda m: m(torch.zeros(1, 2, 5), start_at_layer=1), r"residual stream \[batch pos d_model=32\]; got \(1, 2, 5\)"),
        (lambda m: m([]), "inputs is an empty list"),
        (lambda m: m(torch.tensor([[1, 2]]), attention_mask=torch.tensor([[0, 0]])), "has no token"),
    ],
)
def test_bad_inputs_name_the_value_and_the_fix(call, message):
    with pytest.raises(InvalidInputError, match=message):
        call(wrapped("mixtral"))


def test_unloadable_model_names_the_zoo_and_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"could not load 'nobody/no-such-moe': it is not a moelens zoo name") as info:
        HookedMoE.from_pretrained("nobody/no-such-moe")
    assert isinstance(info.value, OSError)


def test_transformerlens_names_say_what_is_offered_instead():
    from moelens.cache import ActivationCache
    from moelens.testing import tiny_model
    from moelens.utils import get_act_name

    with pytest.raises(InvalidInputError, match=r"get_act_name\('pattern'\): not offered by moelens: attention internals .* use attn_out"):
        get_act_name("pattern", 0)
    with pytest.raises(InvalidInputError, match=r"get_act_name\('embed', layer=2\): 'embed' is once per model; drop the layer"):
        get_act_name("embed", 2)
    with pytest.raises(UnknownHookError, match="Did you mean 'mlp_out'"):
        get_act_name("mlp_ot", 1)
    bare = ActivationCache({}, (0,), 4, torch.ones(1, 1, dtype=torch.bool))
    with pytest.raises(InvalidInputError, match=r"cache.accumulated_resid needs the model .* model.run_with_cache"):
        bare.accumulated_resid()
    minimax = HookedMoE.from_hf(tiny_model("minimax"))
    _, cache = minimax.run_with_cache(token_batch(0))
    with pytest.raises(UnsupportedArchitectureError, match=r"decompose_resid: in 'minimax' the skip connection carries the normalised stream"):
        cache.decompose_resid()
