"""return_type / loss (against HF's labels= loss, padding ignored) and generate (against HF's greedy
generate; hooks and interventions fire at every step)."""

import functools

import pytest
import torch

from moelens import Ablate, HookedMoE
from moelens.errors import InvalidInputError
from moelens.testing import TINY_FAMILIES

from ..models import token_batch, wrapped

GENERATE_FAMILIES = (*TINY_FAMILIES, "deepseek")  # every family of tests/models.py


@functools.lru_cache(maxsize=None)
def zoo() -> HookedMoE:
    return HookedMoE.from_pretrained("moelens/mixtral-tiny", dtype=torch.float32)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    # fp32 cross-entropy averaged in another order: a few ulps of a value around 5-10
    return torch.allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["zoo", *TINY_FAMILIES])
def test_loss_equals_hf_labels_loss(family):
    model = zoo() if family == "zoo" else wrapped(family)
    ids = model.to_tokens(["What is 2 + 3? Answer: 5"]) if family == "zoo" else token_batch(1, batch=2, pos=7)
    plain = ids.view_as(ids)
    with torch.no_grad():
        reference = model.hf_model(input_ids=plain, labels=plain).loss
        loss = model(ids, return_type="loss")
        logits, both_loss = model(ids, return_type="both")
    assert loss.shape == () and _close(loss, reference)
    assert torch.equal(both_loss, loss) and torch.equal(logits, model(ids))
    per_token = model(ids, return_type="loss", loss_per_token=True)
    assert per_token.shape == (ids.shape[0], ids.shape[1] - 1)
    assert _close(per_token.mean(), reference)


def test_loss_ignores_padding():
    model = zoo()
    texts = ["What is 2 + 3? Answer: 5", "Hi there"]
    with torch.no_grad():
        batch = model(texts, return_type="loss", loss_per_token=True)
        alone = [model(text, return_type="loss", loss_per_token=True)[0] for text in texts]
        short = alone[1].shape[0]
        assert _close(batch[1, :short], alone[1]) and bool((batch[1, short:] == 0).all())
        assert _close(batch[0], alone[0])
        row_loss = model(texts[1], return_type="loss")
        padded = model(model.to_tokens(texts), return_type="loss")
        n0, n1 = alone[0].shape[0], short
        assert _close(padded, (alone[0].sum() + alone[1].sum()) / (n0 + n1))
        assert _close(row_loss, alone[1].mean())
        # left padding gives the same per-row losses
        left = model.to_tokens(texts, padding_side="left")
        left_loss = model(left, return_type="loss", loss_per_token=True)
        assert _close(left_loss[1, -short:], alone[1]) and bool((left_loss[1, :-short] == 0).all())


def test_return_type_through_every_entry_point():
    model = wrapped("mixtral")
    ids = token_batch(2)
    loss = model(ids, return_type="loss")
    assert torch.equal(model.run_with_hooks(ids, return_type="loss"), loss)
    out, cache = model.run_with_cache(ids, "blocks.0.hook_resid_post", return_type="loss")
    assert torch.equal(out, loss) and "blocks.0.hook_resid_post" in cache
    logits, both = model.run_with_cache(ids, return_type="both")[0]
    assert torch.equal(both, loss) and torch.equal(logits, model(ids))
    assert model.run_with_cache(ids, return_type=None)[0] is None
    assert model(ids, return_type=None) is None
    ablated = model.run_with_interventions(ids, Ablate(0, 1), return_type="loss")
    assert torch.equal(ablated, model.run_with_interventions(ids, [Ablate(0, 1)], return_type="both")[1])
    assert not torch.equal(ablated, loss)  # the intervention reaches the loss


def test_return_type_errors_name_the_fix():
    model = wrapped("mixtral")
    ids = token_batch(0)
    with pytest.raises(InvalidInputError, match="return_type='logit'"):
        model(ids, return_type="logit")
    with pytest.raises(InvalidInputError, match="stop_at_layer"):
        model(ids, return_type="loss", stop_at_layer=1)
    with pytest.raises(InvalidInputError, match="start_at_layer"):
        model(torch.zeros(1, 3, model.cfg.d_model), start_at_layer=1, return_type="loss")
    with pytest.raises(InvalidInputError, match="at least 2 tokens"):
        model(ids[:, :1], return_type="loss")


# -- generate -------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", GENERATE_FAMILIES)
def test_greedy_generate_equals_hf(family):
    model = wrapped(family)
    ids = token_batch(3, batch=2, pos=5)
    expected = model.hf_model.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(model.generate(ids, 6), expected)
    # a left-padded batch: HF with the same mask
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    expected = model.hf_model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
    assert torch.equal(model.generate(ids, 4, attention_mask=mask), expected)


def test_greedy_generate_equals_hf_on_the_zoo_model_and_returns_text():
    model = zoo()
    prompts = ["What is 2 + 3?\nAnswer:", "Review: a warm film\nSentiment:"]
    ids, mask = model.to_tokens(prompts, padding_side="left", return_mask=True)
    expected = model.hf_model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    out = model.generate(prompts, 5, return_type="tokens")
    assert torch.equal(out, expected)
    texts = model.generate(prompts, 5)
    assert texts == model.tokenizer.batch_decode(expected, skip_special_tokens=True)
    assert model.generate(prompts[0], 5) == texts[0]
    # right-padded ids from to_tokens are re-aligned to the left
    assert torch.equal(model.generate(model.to_tokens(prompts), 5), expected)


def test_sampling_equals_hf_sampling_with_the_same_seed():
    model = wrapped("mixtral")
    ids = token_batch(4, batch=2, pos=4)
    torch.manual_seed(7)
    ours = model.generate(ids, 6, do_sample=True, temperature=0.7, top_k=20, top_p=0.9)
    torch.manual_seed(7)
    theirs = model.hf_model.generate(ids, max_new_tokens=6, do_sample=True, temperature=0.7, top_k=20, top_p=0.9)
    assert torch.equal(ours, theirs)


def test_stop_at_eos():
    model = wrapped("mixtral")
    ids = token_batch(5, batch=1, pos=4)
    first = int(model.generate(ids, 1, stop_at_eos=False)[0, -1])
    stopped = model.generate(ids, 5, eos_token_id=first)
    assert stopped.shape[1] == ids.shape[1] + 1 and stopped.attention_mask[0, -1] == 1
    assert model.generate(ids, 5, eos_token_id=first, stop_at_eos=False).shape[1] == ids.shape[1] + 5


@pytest.mark.parametrize("kv_cache", [True, False])
def test_hooks_fire_once_per_step_per_layer(kv_cache):
    model = wrapped("qwen2_moe")
    ids = token_batch(6, batch=2, pos=5)
    steps = 4
    counts: dict[str, int] = {}

    def count(x, hook):
        counts[hook.name] = counts.get(hook.name, 0) + 1

    names = ["blocks.0.hook_resid_pre", "blocks.1.moe.hook_topk_indices", "blocks.1.hook_resid_post"]
    model.generate(ids, steps, stop_at_eos=False, use_past_kv_cache=kv_cache, fwd_hooks=[(n, count) for n in names])
    assert counts == dict.fromkeys(names, steps)
    counts.clear()
    with model.hooks([(n, count) for n in names]):
        model.generate(ids, steps, stop_at_eos=False, use_past_kv_cache=kv_cache)
    assert counts == dict.fromkeys(names, steps)


def test_hf_generate_inside_hooks_fires_the_hooks():
    model = wrapped("mixtral")
    ids = token_batch(7, batch=1, pos=3)
    shapes = []
    with model.hooks([("blocks.1.hook_resid_post", lambda x, hook: shapes.append(tuple(x.shape[:2])))]):
        model.hf_model.generate(ids, max_new_tokens=3, do_sample=False, eos_token_id=None)
    assert shapes == [(1, 3), (1, 1), (1, 1)]
    shapes.clear()
    model.hf_model.generate(ids, max_new_tokens=3, do_sample=False, eos_token_id=None)
    assert shapes == []  # outside the block nothing is installed


def test_interventions_apply_at_every_step():
    model = wrapped("mixtral")
    ids = token_batch(8, batch=2, pos=4)
    ablate = [Ablate("all", 0), Ablate("all", 1)]
    out = model.generate(ids, 5, stop_at_eos=False, interventions=ablate, use_past_kv_cache=False)
    # reference: a greedy loop over whole-sequence calls with the interventions
    seq = ids
    for _ in range(5):
        logits = model.run_with_interventions(seq, ablate)
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)
    assert torch.equal(model.generate(ids, 5, stop_at_eos=False, interventions=ablate), seq)  # KV cache: same tokens
    with model.intervene(*ablate):
        assert torch.equal(model.generate(ids, 5, stop_at_eos=False), seq)
    assert not torch.equal(model.generate(ids, 5, stop_at_eos=False), seq)


def test_generate_refuses_bad_arguments():
    model = wrapped("mixtral")
    with pytest.raises(InvalidInputError, match="max_new_tokens"):
        model.generate(token_batch(0), 0)
    with pytest.raises(InvalidInputError, match="return_type"):
        model.generate(token_batch(0), 2, return_type="logits")


def test_transformer_lens_generate_arguments():
    model = wrapped("mixtral")
    ids = token_batch(9, batch=1, pos=4)
    greedy = model.generate(ids, 3, stop_at_eos=False)
    assert torch.equal(model.generate(ids, 3, stop_at_eos=False, do_sample=True, temperature=0.0, verbose=True), greedy)
    assert torch.equal(model.generate(ids, 3, stop_at_eos=False, padding_side="left"), greedy)
    with pytest.raises(InvalidInputError, match="repetition_penalty"):
        model.generate(ids, 3, freq_penalty=1.0)
    with pytest.raises(InvalidInputError, match="left-padded"):
        model.generate(ids, 3, padding_side="right")


def test_generate_text_needs_a_tokenizer():
    with pytest.raises(InvalidInputError, match="needs a tokenizer"):
        wrapped("mixtral").generate(token_batch(0), 2, return_type="str")
