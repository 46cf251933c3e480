"""DeepSeek families: DeepSeek-MoE (remote code), DeepSeek-V2, DeepSeek-V3 and its clones."""

from .io import INDEX_WEIGHTS_AUX, LOGITS_WEIGHTS_INDEX
from .routing import deepseek_v1_softmax_topk, deepseek_v2_softmax_topk, sigmoid_bias_group_topk
from .spec import ArchitectureSpec, ExpertLayout, RoutingRule

DEEPSEEK_V1 = ArchitectureSpec(
    model_types=("deepseek",),
    logits_from_head=lambda logits, config: logits.float(),  # the remote DeepseekForCausalLM casts
    routing=RoutingRule(
        "softmax", deepseek_v1_softmax_topk, "softmax -> greedy top-k -> renormalise iff norm_topk_prob (k > 1)"
    ),
    router_io=INDEX_WEIGHTS_AUX,
    n_experts_attr="n_routed_experts",
    top_k_attr="num_experts_per_tok",
    moe_returns_tuple=False,
    experts_layout="module_list",
    expert_weights=ExpertLayout(gate_up=None, down=None),
    router="gate",
    experts="experts",
    shared_experts="shared_experts",
    d_mlp_attr="moe_intermediate_size",
    shared_expert_count=lambda config: config.n_shared_experts or 0,
    checkpoints=("deepseek-ai/deepseek-moe-16b-base", "deepseek-ai/deepseek-moe-16b-chat"),
    notes="Loaded with trust_remote_code=True. MoEGate returns (index, weights, aux_loss) and never the "
    "logits: moelens recomputes them from the gate's weight. Experts are a ModuleList, so "
    "hook_expert_out is not offered. The first layer is dense.",
)

DEEPSEEK_V2 = ArchitectureSpec(
    model_types=("deepseek_v2",),
    routing=RoutingRule(
        "softmax",
        deepseek_v2_softmax_topk,
        "fp32 softmax -> greedy or group-limited top-k (group score = max) -> x routed_scaling_factor",
    ),
    router_io=LOGITS_WEIGHTS_INDEX,
    n_experts_attr="n_routed_experts",
    top_k_attr="num_experts_per_tok",
    moe_returns_tuple=False,
    experts_layout="fused",
    router="gate",
    experts="experts",
    shared_experts="shared_experts",
    d_mlp_attr="moe_intermediate_size",
    shared_expert_count=lambda config: config.n_shared_experts,
    checkpoints=("deepseek-ai/DeepSeek-V2-Lite", "deepseek-ai/DeepSeek-V2"),
    notes="MoE from layer first_k_dense_replace on; norm_topk_prob is never read by this family.",
)

DEEPSEEK_V3 = ArchitectureSpec(
    model_types=("deepseek_v3", "glm4_moe"),
    routing=RoutingRule(
        "sigmoid",
        sigmoid_bias_group_topk,
        "sigmoid -> + e_score_correction_bias for selection -> group-limited top-k (group score = sum "
        "of top-2) -> unbiased weights, renormalised iff norm_topk_prob -> x routed_scaling_factor",
    ),
    router_io=LOGITS_WEIGHTS_INDEX,
    n_experts_attr="n_routed_experts",
    top_k_attr="num_experts_per_tok",
    moe_returns_tuple=False,
    experts_layout="fused",
    router="gate",
    experts="experts",
    shared_experts="shared_experts",
    d_mlp_attr="moe_intermediate_size",
    shared_expert_count=lambda config: config.n_shared_experts,
    checkpoints=("deepseek-ai/DeepSeek-V3", "deepseek-ai/DeepSeek-R1", "zai-org/GLM-4.5-Air"),
    notes="Slot order is not weight order (unsorted top-k): compare routing as sets or dense masks.",
)
