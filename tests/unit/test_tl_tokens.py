"""TransformerLens's token verbs: to_tokens (ids that carry their mask), to_str_tokens, to_string,
to_single_token, and every entry point accepting what to_tokens returns."""

import functools
import pickle

import pytest
import torch

from moelens import Ablate, HookedMoE
from moelens.errors import InvalidInputError

TEXTS = ["Hello world, what is 2 + 3?", "Hi"]


@functools.lru_cache(maxsize=None)
def zoo() -> HookedMoE:
    return HookedMoE.from_pretrained("moelens/mixtral-tiny", dtype=torch.float32)


def test_to_tokens_is_hf_tokenizer_output_with_its_mask():
    model = zoo()
    tokens = model.to_tokens(TEXTS)
    reference = model.tokenizer(TEXTS, return_tensors="pt", padding=True)
    assert isinstance(tokens, torch.Tensor) and tokens.dtype == torch.long and tokens.ndim == 2
    assert torch.equal(tokens, reference["input_ids"])
    assert torch.equal(tokens.attention_mask, reference["attention_mask"])
    ids, mask = model.to_tokens(TEXTS, return_mask=True)
    assert type(ids) is torch.Tensor and torch.equal(ids, tokens) and torch.equal(mask, tokens.attention_mask)


def test_prepend_bos_and_padding_side():
    model = zoo()
    bos = model.tokenizer.bos_token_id
    bare = model.tokenizer("Hello world", add_special_tokens=False)["input_ids"]
    assert model.to_tokens("Hello world", prepend_bos=False)[0].tolist() == bare
    assert model.to_tokens("Hello world", prepend_bos=True)[0].tolist() == [bos, *bare]
    ids, mask = model.to_tokens(TEXTS, padding_side="left", return_mask=True)
    short = model.tokenizer(TEXTS[1])["input_ids"]
    assert ids[1, -len(short):].tolist() == short and mask[1].tolist() == [0] * (ids.shape[1] - len(short)) + [1] * len(short)
    with pytest.raises(InvalidInputError, match="padding_side"):
        model.to_tokens("a", padding_side="middle")


def test_truncate_keeps_n_ctx_tokens_and_max_length_fewer():
    model = zoo()
    long = "word " * (model.cfg.n_ctx + 50)
    assert model.to_tokens(long).shape[1] == model.cfg.n_ctx
    assert model.to_tokens(long, max_length=7).shape[1] == 7
    assert model.to_tokens(long, truncate=False).shape[1] > model.cfg.n_ctx


def test_entry_points_accept_to_tokens_output_and_use_its_mask():
    model = zoo()
    tokens = model.to_tokens(TEXTS)
    from_texts = model(TEXTS)
    assert torch.equal(model(tokens), from_texts)
    assert torch.equal(model.run_with_hooks(tokens), from_texts)
    logits, cache = model.run_with_cache(tokens)
    assert torch.equal(logits, from_texts) and torch.equal(cache.attention_mask, tokens.attention_mask.bool())
    assert torch.equal(model.run_with_interventions(tokens, Ablate(0, 1)), model.run_with_interventions(TEXTS, Ablate(0, 1)))
    # left padding too: the carried mask gives the real tokens their positions
    left = model.to_tokens(TEXTS, padding_side="left")
    real = left.attention_mask.bool()
    assert torch.allclose(model(left)[real], from_texts[tokens.attention_mask.bool()], atol=1e-4)
    # the mask changes the result: without it the padded row's pads would count as tokens
    plain = tokens.view_as(tokens)
    _, unmasked = model.run_with_cache(plain)
    assert bool(unmasked.attention_mask.all()) and not bool(cache.attention_mask.all())


def test_an_explicit_mask_wins_and_derived_tensors_are_plain():
    model = zoo()
    tokens = model.to_tokens(TEXTS)
    assert type(tokens[:, :3]) is torch.Tensor and type(tokens + 0) is torch.Tensor
    assert torch.equal(tokens.clone().attention_mask, tokens.attention_mask)
    ones = torch.ones_like(tokens)
    _, cache = model.run_with_cache(tokens, attention_mask=ones)
    assert bool(cache.attention_mask.all())
    restored = pickle.loads(pickle.dumps(tokens))
    assert type(restored) is torch.Tensor and torch.equal(restored, tokens)


def test_analyses_accept_to_tokens_output():
    from moelens import collect_routing_stats

    model = zoo()
    tokens = model.to_tokens(TEXTS)
    stats = collect_routing_stats(model, {"d": tokens})
    from_texts = collect_routing_stats(model, {"d": TEXTS})
    assert torch.equal(stats.activation_rate, from_texts.activation_rate)


def test_to_str_tokens_is_readable_and_drops_padding():
    model = zoo()
    pieces = model.to_str_tokens("Hello world")
    assert pieces == ["<s>", "H", "ell", "o", " world"]
    assert not any(marker in "".join(pieces) for marker in ("Ġ", "▁", "Ċ"))
    rows = model.to_str_tokens(TEXTS)
    assert rows[1] == ["<s>", "H", "i"] and "".join(rows[0]) == "<s>" + TEXTS[0]
    assert model.to_str_tokens(model.to_tokens(TEXTS)) == rows  # the carried mask drops the padding
    assert model.to_str_tokens(model.to_tokens("Hello world")[0]) == pieces
    assert model.to_str_tokens(model.to_tokens("Hello world")[0].tolist()) == pieces


def test_to_string_round_trips():
    model = zoo()
    assert model.to_string(model.to_tokens("Hello world")) == "<s>Hello world"
    assert model.to_string(model.to_tokens(TEXTS)) == ["<s>" + text for text in TEXTS]
    assert model.to_string(model.to_tokens("Hello world", prepend_bos=False)[0].tolist()) == "Hello world"


def test_to_single_token():
    model = zoo()
    token = model.to_single_token(" world")
    assert model.to_tokens(" world", prepend_bos=False).tolist() == [[token]]
    with pytest.raises(InvalidInputError, match=r"'Hello' is 3 tokens \(\['H', 'ell', 'o'\]\), not one"):
        model.to_single_token("Hello")
    with pytest.raises(InvalidInputError, match="not one"):
        model.to_single_token("")


def test_token_verbs_without_tokenizer_say_what_to_do():
    from moelens.testing import tiny_model

    model = HookedMoE.from_hf(tiny_model("mixtral"))
    with pytest.raises(InvalidInputError, match="needs a tokenizer"):
        model.to_tokens("Hi")


def test_move_to_device_false_keeps_the_ids_on_the_cpu():
    model = zoo()
    tokens = model.to_tokens(TEXTS, move_to_device=False)
    assert tokens.device.type == "cpu" and torch.equal(tokens, model.to_tokens(TEXTS).cpu())


def test_driver_effects_and_mediation_accept_padded_to_tokens_output():
    from moelens import driver_effects, routing_mediation

    model = zoo()
    texts = ["What is 2 + 3?", "Hi there"]
    quiet = {"layers": [0], "progress": False}
    assert torch.equal(driver_effects(model, model.to_tokens(texts), **quiet).effect, driver_effects(model, texts, **quiet).effect)
    clean, corrupt = ["What is 2 + 3?", "Hi there"], ["What is 2 + 4?", "Hi where"]
    from_ids = routing_mediation(model, model.to_tokens(clean), model.to_tokens(corrupt), layers=[0], experts=[0, 1], progress=False)
    from_texts = routing_mediation(model, clean, corrupt, layers=[0], experts=[0, 1], progress=False)
    assert torch.equal(from_ids.indirect[:, :2], from_texts.indirect[:, :2])  # the experts not asked for are NaN
    assert torch.equal(from_ids.per_pair_total, from_texts.per_pair_total)


def test_hook_layer_reads_as_an_int_and_calls_as_in_transformer_lens():
    model = HookedMoE.from_pretrained("moelens/mixtral-tiny")
    seen = []
    model.run_with_hooks("a b", fwd_hooks=[(lambda name: name.endswith("hook_resid_post"), lambda x, hook: seen.append((hook.layer, hook.layer())))])
    assert seen == [(layer, layer) for layer in range(model.cfg.n_layers)]
    assert all(type(called) is int for _, called in seen)
