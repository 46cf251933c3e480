"""A tensor returned to a router hook is used even when its values are unchanged, so gradients
can flow through routing edits (attribution through the router logits)."""

from __future__ import annotations

import torch

from ..models import token_batch, wrapped


def test_gradient_reaches_a_zero_offset_on_the_router_logits():
    model = wrapped("mixtral")
    layer = model.cfg.moe_layers[0]
    offset = torch.zeros(1, 1, model.cfg.n_experts, requires_grad=True)
    logits = model.run_with_hooks(token_batch(0, 1, 5), fwd_hooks=[(f"blocks.{layer}.moe.hook_router_logits", lambda x, hook: x + offset)])
    logits[0, -1].logsumexp(-1).backward()
    assert offset.grad is not None and bool(offset.grad.abs().sum() > 0)
    with torch.no_grad():
        assert torch.equal(logits, model(token_batch(0, 1, 5)))  # the zero offset changes nothing
