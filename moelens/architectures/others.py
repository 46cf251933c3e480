"""GPT-OSS, GraniteMoE, PhiMoE and Llama-4: routers that pick on the logits or with sparsemixer."""

from .io import DENSE_SCORES_LOGITS, LOGITS_WEIGHTS_INDEX
from .routing import sparsemixer_eval, topk_then_sigmoid, topk_then_softmax
from .spec import ArchitectureSpec, ExpertLayout, ResidualForm, RoutingRule

_TOPK_THEN_SOFTMAX = RoutingRule("softmax", topk_then_softmax, "top-k on the logits -> softmax over the k values")

GPT_OSS = ArchitectureSpec(
    model_types=("gpt_oss",),
    routing=_TOPK_THEN_SOFTMAX,
    router_io=LOGITS_WEIGHTS_INDEX,
    n_experts_attr="num_local_experts",
    top_k_attr="num_experts_per_tok",
    moe_returns_tuple=True,
    experts_layout="fused",
    router="router",
    experts="experts",
    shared_experts=None,
    # gate_up_proj [E, H, 2F] with gate and up interleaved, biases, and a clamped SwiGLU:
    # (up.clamp(-limit, limit) + 1) * g * sigmoid(alpha * g), g = gate.clamp(max=limit)
    expert_weights=ExpertLayout(
        transposed=True, interleaved=True, gate_up_bias="gate_up_proj_bias", down_bias="down_proj_bias", act_fn="swiglu_clamped"
    ),
    checkpoints=("openai/gpt-oss-20b", "openai/gpt-oss-120b"),
    notes="The router is a linear layer with a bias. The block returns (hidden, router_scores). With the "
    "`kernels` package and use_kernels=True the whole MLP is replaced and no hook fires.",
)

GRANITEMOE = ArchitectureSpec(
    model_types=("granitemoe",),
    logits_from_head=lambda logits, config: logits / config.logits_scaling,  # GraniteMoeForCausalLM
    routing=_TOPK_THEN_SOFTMAX,
    router_io=LOGITS_WEIGHTS_INDEX,
    n_experts_attr="num_local_experts",
    top_k_attr="num_experts_per_tok",
    moe_returns_tuple=False,
    experts_layout="fused",
    moe_block="block_sparse_moe",
    router="router",
    experts="experts",
    shared_experts=None,
    checkpoints=("ibm-granite/granite-3.0-1b-a400m-base", "ibm-granite/granite-3.0-3b-a800m-base"),
    residual=ResidualForm(
        True,
        branch_scale=lambda config: config.residual_multiplier,
        embed_scale=lambda config: config.embedding_multiplier,
        note="both branches are multiplied by residual_multiplier before the add, and the embedding by "
        "embedding_multiplier: resid_mid = resid_pre + attn_out * residual_multiplier",
    ),
    notes="Logits are cast to fp32 before top-k; weights are cast back to the hidden dtype.",
)

PHIMOE = ArchitectureSpec(
    model_types=("phimoe",),
    routing=RoutingRule(
        "sparsemixer", sparsemixer_eval, "sparsemixer (eval path): top-2 hard-coded, masked softmax per slot"
    ),
    router_io=LOGITS_WEIGHTS_INDEX,
    n_experts_attr="num_local_experts",
    top_k_attr="num_experts_per_tok",
    moe_returns_tuple=False,
    experts_layout="fused",
    router="router",
    experts="experts",
    shared_experts=None,
    checkpoints=("microsoft/Phi-3.5-MoE-instruct",),
    norm="layer",  # nn.LayerNorm everywhere (with a bias), not RMSNorm
    notes="In train() the router samples (Gumbel) and jitters its input: analyse in eval(). k is always 2.",
)

LLAMA4_TEXT = ArchitectureSpec(
    model_types=("llama4_text",),
    routing=RoutingRule("sigmoid", topk_then_sigmoid, "top-k on the logits -> sigmoid of each selected logit"),
    router_io=DENSE_SCORES_LOGITS,
    n_experts_attr="num_local_experts",
    top_k_attr="num_experts_per_tok",
    moe_returns_tuple=True,
    experts_layout="dense",
    moe_block="feed_forward",
    router="router",
    experts="experts",
    shared_experts="shared_expert",
    shared_expert_count=lambda config: 1,
    expert_weights=ExpertLayout(transposed=True),  # gate_up_proj [E, H, 2F] (gate half first), down_proj [E, F, H]
    checkpoints=("meta-llama/Llama-4-Scout-17B-16E", "meta-llama/Llama-4-Maverick-17B-128E"),
    notes="Every expert runs on every token and the routing weight multiplies the expert's *input* "
    "(unselected experts get weight 0), so hook_expert_out is not offered. MoE layers are those in "
    "config.moe_layers. The block returns (hidden, router_logits).",
)
