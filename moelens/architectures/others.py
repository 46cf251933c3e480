"""GPT-OSS, GraniteMoE and PhiMoE: routers that pick on the logits or with sparsemixer."""

from .io import LOGITS_WEIGHTS_INDEX
from .routing import sparsemixer_eval, topk_then_softmax
from .spec import ArchitectureSpec, RoutingRule

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
    checkpoints=("openai/gpt-oss-20b", "openai/gpt-oss-120b"),
    notes="The router is a linear layer with a bias. The block returns (hidden, router_scores). With the "
    "`kernels` package and use_kernels=True the whole MLP is replaced and no hook fires.",
)

GRANITEMOE = ArchitectureSpec(
    model_types=("granitemoe",),
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
    notes="In train() the router samples (Gumbel) and jitters its input: analyse in eval(). k is always 2.",
)
