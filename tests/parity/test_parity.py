"""Every registered family against HF's own forward: bit-identical logits, routing and recomputation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from moelens import HookedMoE
from moelens.architectures import resolve, supported_model_types
from moelens.testing import tiny_model

from .deepseek_remote import deepseek_v1_tiny

# (family, seed, config overrides): shared experts, norm_topk_prob on and off, group-limited
# routing, dense first layers are all covered.
CASES = [
    ("mixtral", 0, {}),
    ("mixtral", 1, {"num_local_experts": 8, "num_experts_per_tok": 3}),
    ("minimax", 0, {}),
    ("qwen2_moe", 0, {"norm_topk_prob": False}),
    ("qwen2_moe", 1, {"norm_topk_prob": True, "mlp_only_layers": [0]}),
    ("qwen3_moe", 0, {"norm_topk_prob": True}),
    ("qwen3_moe", 1, {"norm_topk_prob": False}),
    ("olmoe", 0, {"norm_topk_prob": False}),
    ("olmoe", 1, {"norm_topk_prob": True}),
    ("deepseek_v2", 0, {"topk_method": "group_limited_greedy"}),
    ("deepseek_v2", 1, {"topk_method": "greedy"}),
    ("deepseek_v3", 0, {"norm_topk_prob": True}),
    ("deepseek_v3", 1, {"norm_topk_prob": False, "n_group": 1, "topk_group": 1}),
    ("deepseek_v3", 2, {"n_group": 2, "topk_group": 1, "num_experts_per_tok": 3}),
    ("glm4_moe", 0, {}),
    ("gpt_oss", 0, {}),
    ("gpt_oss", 1, {"num_experts_per_tok": 3}),
    ("granitemoe", 0, {}),
    ("phimoe", 0, {}),
    ("phimoe", 1, {"router_jitter_noise": 0.3}),
    ("llama4_text", 0, {}),
    ("llama4_text", 1, {"num_experts_per_tok": 2, "moe_layers": [0, 2]}),
    ("deepseek", 0, {}),
    ("deepseek", 1, {"norm_topk_prob": True}),
]
IDS = [f"{family}-{seed}" for family, seed, _ in CASES]


def build(family: str, seed: int, overrides: dict) -> nn.Module:
    if family == "deepseek":
        return deepseek_v1_tiny(seed, **overrides)
    return tiny_model(family, seed, **overrides)


def tokens(seed: int, batch: int = 3, pos: int = 9) -> torch.Tensor:
    return torch.randint(3, 97, (batch, pos), generator=torch.Generator().manual_seed(seed))


def capture_hf_routing(hf: nn.Module, model: HookedMoE, ids: torch.Tensor) -> list[dict]:
    """Router inputs/outputs and experts' inputs per MoE layer, captured with plain torch hooks."""
    records, handles = [], []
    for layer in model.cfg.moe_layers:
        block = resolve(model.layers[layer], model.spec.moe_block)
        record: dict = {}
        router = resolve(block, model.spec.router)

        def on_router(module, args, output, record=record):
            record["router"], record["router_in"], record["router_out"] = module, args[0], output

        handles.append(router.register_forward_hook(on_router))
        if model.spec.experts_layout == "fused":

            def on_experts(module, args, record=record):
                record["index"], record["weights"] = args[1], args[2]

            handles.append(resolve(block, model.spec.experts).register_forward_pre_hook(on_experts))
        records.append(record)
    try:
        with torch.no_grad():
            logits = hf(ids).logits
    finally:
        for handle in handles:
            handle.remove()
    for record in records:
        unpacked = model.spec.router_io.unpack(record["router_out"], record["router_in"], record["router"])
        record.setdefault("index", unpacked.index)
        record.setdefault("weights", unpacked.weights)
        record["logits"] = unpacked.logits
    records.append({"final_logits": logits})
    return records


@pytest.mark.parametrize(("family", "seed", "overrides"), CASES, ids=IDS)
def test_logits_bit_identical(family, seed, overrides):
    hf = build(family, seed, overrides)
    ids = tokens(seed)
    with torch.no_grad():
        reference = hf(ids).logits
        model = HookedMoE.from_hf(hf)
        assert torch.equal(model(ids), reference)
        # a full cache, expert outputs included, reads without changing anything
        logits, cache = model.run_with_cache(ids)
    assert torch.equal(logits, reference)
    assert set(cache) == set(model.hook_names)


@pytest.mark.parametrize(("family", "seed", "overrides"), CASES, ids=IDS)
def test_routing_equals_hf(family, seed, overrides):
    hf = build(family, seed, overrides)
    model = HookedMoE.from_hf(hf)
    ids = tokens(seed + 100)
    hf_records = capture_hf_routing(hf, model, ids)[:-1]
    with torch.no_grad():
        _, cache = model.run_with_cache(ids)
    batch, pos = ids.shape
    for moe_index, (layer, record) in enumerate(zip(model.cfg.moe_layers, hf_records)):
        cached_logits = cache[f"blocks.{layer}.moe.hook_router_logits"]
        assert cached_logits.shape == (batch, pos, model.cfg.n_experts)
        assert torch.equal(cached_logits.reshape(batch * pos, -1), record["logits"])
        # top-k as the experts received it, slot for slot
        assert torch.equal(cache[f"blocks.{layer}.moe.hook_topk_indices"].reshape(batch * pos, -1), record["index"])
        assert torch.equal(cache[f"blocks.{layer}.moe.hook_topk_weights"].reshape(batch * pos, -1), record["weights"])
        # recomputing from the unedited logits reproduces HF's selection and weights exactly
        router = resolve(resolve(model.layers[layer], model.spec.moe_block), model.spec.router)
        routing = model.spec.routing.route(record["logits"], router)
        assert torch.equal(routing.index, record["index"])
        assert torch.equal(routing.weights.to(record["weights"].dtype), record["weights"])
        assert torch.equal(cache.topk_indices()[moe_index].reshape(batch * pos, -1), record["index"])


@pytest.mark.parametrize(("family", "seed", "overrides"), [c for c in CASES if c[0] != "deepseek"], ids=[i for i in IDS if not i.startswith("deepseek-")])
def test_cached_router_logits_equal_output_router_logits(family, seed, overrides):
    hf = build(family, seed, overrides)
    ids = tokens(seed + 7)
    with torch.no_grad():
        recorded = hf(ids, output_router_logits=True).router_logits
        model = HookedMoE.from_hf(hf)
        _, cache = model.run_with_cache(ids, names_filter=lambda name: name.endswith("hook_router_logits"))
    assert len(recorded) == len(model.cfg.moe_layers)
    stacked = cache.router_logits()
    for moe_index in range(len(recorded)):
        assert torch.equal(stacked[moe_index].reshape(-1, model.cfg.n_experts), recorded[moe_index])


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "deepseek_v3", "gpt_oss", "granitemoe"])
def test_bf16_matches_hf_bit_for_bit(family):
    # HF itself is deterministic on CPU in bf16 (two identical runs agree exactly), so the tolerance
    # "what HF shows between two identical runs" is zero here.
    hf = tiny_model(family, 3).to(torch.bfloat16)
    ids = tokens(3)
    with torch.no_grad():
        first, second = hf(ids).logits, hf(ids).logits
        assert torch.equal(first, second)
        model = HookedMoE.from_hf(hf)
        logits, cache = model.run_with_cache(ids)
    assert torch.equal(logits, first)
    assert cache.topk_weights().dtype in (torch.bfloat16, torch.float32)


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "deepseek_v3"])
def test_padding_real_tokens_match_unpadded_hf(family):
    hf = tiny_model(family, 4)
    ids = tokens(4, batch=2, pos=8)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # right padding on row 1
    with torch.no_grad():
        reference = hf(ids, attention_mask=mask).logits
        logits = HookedMoE.from_hf(hf)(ids, attention_mask=mask)
    real = mask.bool()
    assert torch.equal(logits[real], reference[real])


def test_every_registered_family_has_a_parity_case():
    covered = {family for family, _, _ in CASES}
    assert covered == set(supported_model_types())


def _branch(model: HookedMoE, scale_of) -> callable:
    """The family's own branch multiplication (none for a plain add), as data in its spec."""
    if scale_of is None:
        return lambda tensor: tensor
    scale = scale_of(model.hf_model.config)
    return lambda tensor: tensor * scale


@pytest.mark.parametrize(("family", "seed", "overrides"), CASES, ids=IDS)
def test_residual_identities(family, seed, overrides):
    """resid_mid == resid_pre + attn_out and resid_post == resid_mid + mlp_out, bit for bit (HF's own
    adds, recomputed on the cached tensors), on every layer, dense layers of mixed models included;
    Granite multiplies each branch (and the embedding) by a config factor; MiniMax's skip connection
    carries the normalised stream, so it gets its own formula (docs/concepts/hook-points.md)."""
    hf = build(family, seed, overrides)
    model = HookedMoE.from_hf(hf)
    ids = tokens(seed + 3)
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids)
        n = model.cfg.n_layers
        assert torch.equal(cache["ln_final.hook_normalized"], model.final_norm(cache[f"blocks.{n - 1}.hook_resid_post"]))
        assert torch.equal(model.spec.logits_from_head(hf.lm_head(cache["ln_final.hook_normalized"]), hf.config), logits)
        form = model.spec.residual
        branch, embed = _branch(model, form.branch_scale), _branch(model, form.embed_scale)
        for layer in range(n):
            pre, mid, post = (cache[f"blocks.{layer}.hook_resid_{w}"] for w in ("pre", "mid", "post"))
            attn, mlp = cache[f"blocks.{layer}.hook_attn_out"], cache[f"blocks.{layer}.hook_mlp_out"]
            if layer in model.cfg.moe_layers:
                assert torch.equal(mlp, cache[f"blocks.{layer}.moe.hook_out"])
            if layer + 1 < n:
                assert torch.equal(cache[f"blocks.{layer + 1}.hook_resid_pre"], post)
            if form.additive:
                assert torch.equal(mid, pre + branch(attn)), f"layer {layer}: resid_mid != resid_pre + attn_out"
                assert torch.equal(post, mid + branch(mlp)), f"layer {layer}: resid_post != resid_mid + mlp_out"
            else:  # MiniMax: h = norm(x); x' = h * alpha + branch(h) * beta
                block = model.layers[layer]
                assert not torch.equal(mid, pre + attn)
                skip = block.input_layernorm(pre)
                assert torch.equal(mid, skip * block.attn_alpha_factor + attn * block.attn_beta_factor)
                skip = block.post_attention_layernorm(mid)
                assert torch.equal(post, skip * block.mlp_alpha_factor + mlp * block.mlp_beta_factor)
        if form.additive:
            assert torch.equal(cache["blocks.0.hook_resid_pre"], embed(cache["hook_embed"]))


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3", "granitemoe", "llama4_text"])
def test_residual_identities_in_bf16(family):
    """The same adds in bf16: still bit for bit (HF's op on the cached tensors, same dtype)."""
    model = HookedMoE.from_hf(tiny_model(family, 3).to(torch.bfloat16))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens(3))
    branch = _branch(model, model.spec.residual.branch_scale)
    for layer in range(model.cfg.n_layers):
        assert cache["resid_mid", layer].dtype == torch.bfloat16
        assert torch.equal(cache["resid_mid", layer], cache["resid_pre", layer] + branch(cache["attn_out", layer]))
        assert torch.equal(cache["resid_post", layer], cache["resid_mid", layer] + branch(cache["mlp_out", layer]))
