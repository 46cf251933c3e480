"""Qwen-MoE families and OLMoE: softmax (fp32) -> top-k -> renormalise iff ``norm_topk_prob``."""

from .io import LOGITS_WEIGHTS_INDEX
from .routing import softmax_topk_renormalise_if_flag
from .spec import ArchitectureSpec, RoutingRule

_RULE = RoutingRule(
    "softmax",
    softmax_topk_renormalise_if_flag,
    "fp32 softmax -> top-k -> renormalise iff norm_topk_prob -> cast to the logits' dtype",
)

QWEN2_MOE = ArchitectureSpec(
    model_types=("qwen2_moe",),
    routing=_RULE,
    router_io=LOGITS_WEIGHTS_INDEX,
    n_experts_attr="num_experts",
    top_k_attr="num_experts_per_tok",
    moe_returns_tuple=False,
    experts_layout="fused",
    router="gate",
    experts="experts",
    shared_experts="shared_expert",
    d_mlp_attr="moe_intermediate_size",
    shared_expert_count=lambda config: 1,
    shared_first=True,
    checkpoints=("Qwen/Qwen1.5-MoE-A2.7B",),
    notes="The shared expert's output is multiplied by sigmoid(shared_expert_gate(x)); "
    "hook_shared_out is the shared expert's output before that gate.",
)

QWEN3_MOE = ArchitectureSpec(
    model_types=("qwen3_moe",),
    routing=_RULE,
    router_io=LOGITS_WEIGHTS_INDEX,
    n_experts_attr="num_experts",
    top_k_attr="num_experts_per_tok",
    moe_returns_tuple=False,
    experts_layout="fused",
    router="gate",
    experts="experts",
    shared_experts=None,
    d_mlp_attr="moe_intermediate_size",
    checkpoints=("Qwen/Qwen3-30B-A3B", "Qwen/Qwen3-235B-A22B"),
)

OLMOE = ArchitectureSpec(
    model_types=("olmoe",),
    routing=_RULE,
    router_io=LOGITS_WEIGHTS_INDEX,
    n_experts_attr="num_experts",
    top_k_attr="num_experts_per_tok",
    moe_returns_tuple=False,
    experts_layout="fused",
    router="gate",
    experts="experts",
    shared_experts=None,
    checkpoints=("allenai/OLMoE-1B-7B-0924", "allenai/OLMoE-1B-7B-0125-Instruct"),
)
