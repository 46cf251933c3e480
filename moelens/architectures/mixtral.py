"""Mixtral and MiniMax: softmax (fp32) -> top-k -> always renormalise; no shared experts."""

from .io import LOGITS_WEIGHTS_INDEX
from .routing import softmax_topk_renormalise
from .spec import ArchitectureSpec, RoutingRule

MIXTRAL = ArchitectureSpec(
    model_types=("mixtral", "minimax"),
    routing=RoutingRule("softmax", softmax_topk_renormalise, "fp32 softmax -> top-k -> renormalise to sum 1"),
    router_io=LOGITS_WEIGHTS_INDEX,
    n_experts_attr="num_local_experts",
    top_k_attr="num_experts_per_tok",
    moe_returns_tuple=False,
    experts_layout="fused",
    router="gate",
    experts="experts",
    shared_experts=None,
    checkpoints=("mistralai/Mixtral-8x7B-v0.1", "mistralai/Mixtral-8x22B-v0.1", "MiniMaxAI/MiniMax-Text-01"),
    notes="Top-k weights stay fp32 in a bf16 model. train() adds multiplicative jitter: analyse in eval().",
)
