"""Mixtral and MiniMax: softmax (fp32) -> top-k -> always renormalise; no shared experts."""

import dataclasses

from .io import LOGITS_WEIGHTS_INDEX
from .routing import softmax_topk_renormalise
from .spec import ArchitectureSpec, ResidualForm, RoutingRule

MIXTRAL = ArchitectureSpec(
    model_types=("mixtral",),
    routing=RoutingRule("softmax", softmax_topk_renormalise, "fp32 softmax -> top-k -> renormalise to sum 1"),
    router_io=LOGITS_WEIGHTS_INDEX,
    n_experts_attr="num_local_experts",
    top_k_attr="num_experts_per_tok",
    moe_returns_tuple=False,
    experts_layout="fused",
    router="gate",
    experts="experts",
    shared_experts=None,
    checkpoints=("mistralai/Mixtral-8x7B-v0.1", "mistralai/Mixtral-8x22B-v0.1"),
    notes="Top-k weights stay fp32 in a bf16 model. train() adds multiplicative jitter: analyse in eval().",
)

# MiniMax routes as Mixtral, but its decoder layer normalises *before* the skip connection:
# ``h = norm1(x); mid = h * alpha + attn(h) * beta; h2 = norm2(mid); post = h2 * alpha' + mlp(h2) * beta'``.
MINIMAX = dataclasses.replace(
    MIXTRAL,
    model_types=("minimax",),
    checkpoints=("MiniMaxAI/MiniMax-Text-01",),
    residual=ResidualForm(
        False,
        note="the skip connection carries the normalised stream: resid_mid = input_layernorm(resid_pre) * "
        "attn_alpha_factor + attn_out * attn_beta_factor, resid_post = post_attention_layernorm(resid_mid) * "
        "mlp_alpha_factor + mlp_out * mlp_beta_factor; the stream is not a sum of branch outputs",
    ),
    notes=MIXTRAL.notes + " The decoder layer normalises before its skip connections (see the residual form).",
)
