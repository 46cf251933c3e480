"""NNsightMoE's TransformerLens calls: the token verbs, return_type/loss on model(...) equal to
HookedMoE's, and generate refused in one line."""

from __future__ import annotations

import pytest
import torch

from moelens.errors import BackendError
from tests.models import token_batch

from .conftest import pair

TEXTS = ["What is 2 + 3?", "Hi"]


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3"])
def test_loss_equals_hookedmoe(family):
    hooked, nns = pair(family)
    ids = token_batch(2)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    for per_token in (False, True):
        expected = hooked(ids, attention_mask=mask, return_type="loss", loss_per_token=per_token)
        assert torch.equal(nns(ids, attention_mask=mask, return_type="loss", loss_per_token=per_token), expected)
    logits, loss = nns(ids, return_type="both")
    assert torch.equal(logits, hooked(ids)) and torch.equal(loss, hooked(ids, return_type="loss"))
    assert nns(ids, return_type=None) is None


def test_token_verbs_equal_hookedmoe():
    hooked, nns = pair("mixtral")
    hooked.tokenizer = nns.tokenizer  # the tiny model has none; borrow nnsight's (the zoo tokenizer)
    try:
        tokens = nns.to_tokens(TEXTS)
        assert torch.equal(tokens, hooked.to_tokens(TEXTS)) and torch.equal(tokens.attention_mask, hooked.to_tokens(TEXTS).attention_mask)
        assert nns.to_str_tokens(TEXTS) == hooked.to_str_tokens(TEXTS)
        assert nns.to_string(tokens) == hooked.to_string(tokens)
        assert nns.to_single_token(" world") == hooked.to_single_token(" world")
        ids = torch.remainder(tokens, 97) * tokens.attention_mask  # inside the tiny vocabulary, same mask
        assert torch.equal(nns(ids, attention_mask=tokens.attention_mask), hooked(ids, attention_mask=tokens.attention_mask))
    finally:
        hooked.tokenizer = None


def test_generate_is_refused_with_the_alternative():
    _, nns = pair("mixtral")
    with pytest.raises(BackendError, match="HookedMoE.generate"):
        nns.generate(token_batch(0), 3)


def test_return_type_through_every_entry_point():
    from moelens import Ablate

    hooked, nns = pair("qwen2_moe")
    ids = token_batch(3)
    loss = hooked(ids, return_type="loss")
    assert torch.equal(nns.run_with_hooks(ids, return_type="loss"), loss)
    out, cache = nns.run_with_cache(ids, "blocks.0.hook_resid_post", return_type="both")
    assert torch.equal(out[1], loss) and "blocks.0.hook_resid_post" in cache
    ablated = nns.run_with_interventions(ids, Ablate(0, 1), return_type="loss")
    assert torch.equal(ablated, hooked.run_with_interventions(ids, Ablate(0, 1), return_type="loss"))
    assert torch.equal(nns(ids, stop_at_layer=1), hooked(ids, stop_at_layer=1))
