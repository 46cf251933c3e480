"""Loading through nnsight without a network: local folders, explicit tokenizers, clear refusals."""

from __future__ import annotations

import pytest
import torch

from moelens.backends.nnsight import NNsightMoE
from moelens.errors import InvalidInputError, ModelLoadError, UnsupportedArchitectureError
from moelens.testing import tiny_model
from tests.models import token_batch

from .conftest import pair, tokenizer


def test_local_folder_offline_with_an_explicit_tokenizer(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny_model("olmoe").save_pretrained(tmp_path)  # weights and config, no tokenizer files
    model = NNsightMoE.from_pretrained(str(tmp_path), tokenizer=tokenizer())
    assert model.tokenizer is tokenizer()
    hooked, _ = pair("olmoe")
    ids = token_batch(4)
    assert torch.equal(model(ids), hooked(ids))
    assert "olmoe" in repr(model) and "local" in repr(model)


def test_zoo_name_loads_with_its_tokenizer():
    model = NNsightMoE.from_pretrained("moelens/mixtral-tiny")
    logits, cache = model.run_with_cache(["a short text", "and a longer one than that"])
    assert cache.attention_mask.shape == logits.shape[:2] and not bool(cache.attention_mask.all())


def test_missing_folder_is_a_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no-such-folder"):
        NNsightMoE.from_pretrained(str(tmp_path / "no-such-folder"), tokenizer=tokenizer())


def test_refusals():
    from transformers import LlamaConfig, LlamaForCausalLM

    dense = LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(UnsupportedArchitectureError, match="not a supported MoE family"):
        NNsightMoE.from_hf(dense, tokenizer=tokenizer())
    with pytest.raises(InvalidInputError, match="tokenizer="):
        NNsightMoE.from_hf(tiny_model("mixtral"))
    with pytest.raises(InvalidInputError, match="from_hf"):
        NNsightMoE.from_model(tiny_model("mixtral"))
