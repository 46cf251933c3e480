"""``MoEConfig``: what moelens reads about a wrapped model's architecture (``model.cfg``)."""

from dataclasses import dataclass
from typing import Any

from .architectures import ArchitectureSpec

__all__ = ["MoEConfig"]


@dataclass(frozen=True)
class MoEConfig:
    """What moelens knows about the wrapped model's architecture (``model.cfg``).

    >>> from moelens import HookedMoE
    >>> from moelens.testing import tiny_model
    >>> cfg = HookedMoE.from_hf(tiny_model("deepseek_v3")).cfg
    >>> cfg.moe_layers, cfg.n_experts, cfg.top_k, cfg.n_shared_experts, cfg.scoring
    ((1, 2), 8, 2, 1, 'sigmoid')
    >>> cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.n_ctx, cfg.act_fn
    (4, 8, 24, 128, 'silu')
    """

    architecture: str  # HF model_type
    n_layers: int
    moe_layers: tuple[int, ...]
    n_experts: int
    top_k: int
    d_model: int
    d_vocab: int
    n_shared_experts: int
    scoring: str  # "softmax" | "sigmoid" | "sparsemixer"
    # TransformerLens's names for the rest of the architecture
    n_heads: int = 0  # attention heads
    d_head: int = 0  # width of one head's output (config.v_head_dim for MLA, head_dim, else d_model // n_heads)
    d_mlp: int = 0  # FFN width of one routed expert
    n_ctx: int = 0  # config.max_position_embeddings
    act_fn: str = ""  # the experts' activation (config.hidden_act unless the family's spec says otherwise)

    @classmethod
    def of(cls, config: Any, spec: ArchitectureSpec, n_layers: int, moe_layers: tuple[int, ...]) -> "MoEConfig":
        """Read from an HF config through the family's spec (attribute names differ by family).

        >>> from moelens.architectures import spec_for_model_type
        >>> from moelens.testing import tiny_config
        >>> MoEConfig.of(tiny_config("mixtral"), spec_for_model_type("mixtral"), 2, (0, 1)).n_experts
        4
        """
        return cls(
            architecture=config.model_type,
            n_layers=n_layers,
            moe_layers=moe_layers,
            n_experts=getattr(config, spec.n_experts_attr),
            top_k=getattr(config, spec.top_k_attr),
            d_model=config.hidden_size,
            d_vocab=config.vocab_size,
            n_shared_experts=spec.shared_expert_count(config),
            scoring=spec.routing.scoring,
            n_heads=config.num_attention_heads,
            # MLA families (DeepSeek-V2/V3) have no single head width: v_head_dim is what heads write out
            d_head=getattr(config, "v_head_dim", None) or getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
            d_mlp=getattr(config, spec.d_mlp_attr),
            n_ctx=getattr(config, "max_position_embeddings", 0) or 0,
            act_fn=spec.expert_weights.act_fn or getattr(config, "hidden_act", ""),
        )
