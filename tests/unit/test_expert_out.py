"""hook_expert_out holds the unweighted output of each selected expert: weighting and summing it
gives the routed part of the block output."""

from __future__ import annotations

import pytest
import torch

from ..models import token_batch, wrapped


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "deepseek_v3", "gpt_oss", "phimoe"])
def test_weighted_expert_outputs_sum_to_the_routed_output(family):
    model = wrapped(family)
    layer = model.cfg.moe_layers[-1]
    names = [f"blocks.{layer}.moe.{s}" for s in ("hook_expert_out", "hook_topk_weights", "hook_out", "hook_shared_out", "hook_in")]
    with torch.no_grad():
        _, cache = model.run_with_cache(token_batch(2), names_filter=[n for n in names if n in model.hook_names])
    routed = (cache[names[0]] * cache[names[1]].unsqueeze(-1).to(cache[names[0]].dtype)).sum(2)
    out = cache[names[2]]
    if names[3] in cache:  # shared experts add their own (possibly gated) output
        block = model.layers[layer].mlp
        shared = cache[names[3]]
        if hasattr(block, "shared_expert_gate"):
            shared = torch.sigmoid(block.shared_expert_gate(cache[names[4]])) * shared
        out = out - shared
    torch.testing.assert_close(routed, out, rtol=1e-4, atol=1e-5)


def test_doubling_every_expert_output_doubles_the_block_output():
    model = wrapped("mixtral")
    layer = model.cfg.moe_layers[0]
    names = [f"blocks.{layer}.moe.hook_out", f"blocks.{layer}.moe.hook_topk_indices"]

    with torch.no_grad():
        _, clean = model.run_with_cache(token_batch(3), names_filter=names)
        doubled, edited = model.run_with_cache(
            token_batch(3), names_filter=names, fwd_hooks=[(f"blocks.{layer}.moe.hook_expert_out", lambda x, hook: x * 2)]
        )
    torch.testing.assert_close(edited[names[0]], clean[names[0]] * 2, rtol=1e-5, atol=1e-6)
