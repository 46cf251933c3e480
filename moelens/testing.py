"""Tiny random MoE models built from real ``transformers`` config classes, for tests and examples.

Random init hides routing logic (router weights of std 0.02 give near-ties, every correction bias is
zero), so :func:`tiny_model` rescales router weights to std 1 and randomises router biases: dropping a
group limit or a bias then changes the expert set of most tokens, and parity tests can fail.

>>> model = tiny_model("deepseek_v3")
>>> type(model).__name__
'DeepseekV3ForCausalLM'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .errors import InvalidInputError

__all__ = ["TINY_FAMILIES", "tiny_config", "tiny_model", "sharpen_routers"]

_COMMON = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
_MLA = dict(num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8)


def _mixtral(**kw):
    from transformers import MixtralConfig

    return MixtralConfig(**{**_COMMON, "num_local_experts": 4, "num_experts_per_tok": 2, **kw})


def _minimax(**kw):
    from transformers import MiniMaxConfig

    base = {**_COMMON, "num_local_experts": 4, "num_experts_per_tok": 2, "head_dim": 8}
    base["layer_types"] = ["linear_attention", "full_attention"]
    return MiniMaxConfig(**{**base, **kw})


def _qwen2_moe(**kw):
    from transformers import Qwen2MoeConfig

    base = {**_COMMON, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 24}
    base.update(shared_expert_intermediate_size=40, norm_topk_prob=False)
    return Qwen2MoeConfig(**{**base, **kw})


def _qwen3_moe(**kw):
    from transformers import Qwen3MoeConfig

    base = {**_COMMON, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 24, "norm_topk_prob": True}
    return Qwen3MoeConfig(**{**base, **kw})


def _olmoe(**kw):
    from transformers import OlmoeConfig

    return OlmoeConfig(**{**_COMMON, "num_experts": 4, "num_experts_per_tok": 2, "norm_topk_prob": False, **kw})


def _deepseek_v2(**kw):
    from transformers import DeepseekV2Config

    base = {**_COMMON, **_MLA, "num_hidden_layers": 3, "first_k_dense_replace": 1, "n_routed_experts": 8}
    base.update(num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=24, n_group=4, topk_group=2)
    base.update(topk_method="group_limited_greedy", routed_scaling_factor=1.5)
    return DeepseekV2Config(**{**base, **kw})


def _deepseek_v3(**kw):
    from transformers import DeepseekV3Config

    base = {**_COMMON, **_MLA, "num_hidden_layers": 3, "first_k_dense_replace": 1, "n_routed_experts": 8}
    base.update(num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=24, n_group=4, topk_group=2)
    base.update(norm_topk_prob=True, routed_scaling_factor=2.5)
    return DeepseekV3Config(**{**base, **kw})


def _glm4_moe(**kw):
    from transformers import Glm4MoeConfig

    base = {**_COMMON, "num_hidden_layers": 3, "first_k_dense_replace": 1, "n_routed_experts": 8, "head_dim": 8}
    base.update(num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=24, n_group=2, topk_group=1)
    base.update(norm_topk_prob=True, routed_scaling_factor=1.5)
    return Glm4MoeConfig(**{**base, **kw})


def _gpt_oss(**kw):
    from transformers import GptOssConfig

    base = {**_COMMON, "num_local_experts": 4, "num_experts_per_tok": 2, "head_dim": 8}
    base["layer_types"] = ["sliding_attention", "full_attention"]
    base["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
    return GptOssConfig(**{**base, **kw})


def _granitemoe(**kw):
    from transformers import GraniteMoeConfig

    return GraniteMoeConfig(**{**_COMMON, "num_local_experts": 4, "num_experts_per_tok": 2, **kw})


def _phimoe(**kw):
    from transformers import PhimoeConfig

    return PhimoeConfig(**{**_COMMON, "num_local_experts": 4, "num_experts_per_tok": 2, **kw})


def _llama4_text(**kw):
    from transformers import Llama4TextConfig

    base = {**_COMMON, "num_hidden_layers": 3, "num_local_experts": 4, "num_experts_per_tok": 1, "head_dim": 8}
    base.update(intermediate_size_mlp=40, moe_layers=[1, 2], layer_types=["full_attention"] * 3, no_rope_layers=[1, 1, 1])
    return Llama4TextConfig(**{**base, **kw})


TINY_FAMILIES: dict[str, Callable[..., Any]] = {
    "mixtral": _mixtral,
    "minimax": _minimax,
    "qwen2_moe": _qwen2_moe,
    "qwen3_moe": _qwen3_moe,
    "olmoe": _olmoe,
    "deepseek_v2": _deepseek_v2,
    "deepseek_v3": _deepseek_v3,
    "glm4_moe": _glm4_moe,
    "gpt_oss": _gpt_oss,
    "granitemoe": _granitemoe,
    "phimoe": _phimoe,
    "llama4_text": _llama4_text,
}


def tiny_config(family: str, **overrides):
    """A tiny config of a registered family (``overrides`` go to the config constructor)."""
    if family not in TINY_FAMILIES:
        raise InvalidInputError(f"no tiny config for {family!r}; known: {', '.join(TINY_FAMILIES)}")
    return TINY_FAMILIES[family](**overrides)


def sharpen_routers(model: nn.Module, seed: int = 0, router_std: float = 1.0, bias_std: float = 0.5) -> nn.Module:
    """Rescale every router weight to std ``router_std`` and draw router biases, in place."""
    generator = torch.Generator().manual_seed(seed + 12345)
    for name, param in model.named_parameters():
        leaf = name.rsplit(".", 2)
        is_router = any(part in ("gate", "router") for part in leaf[:-1]) and not name.endswith("shared_expert_gate.weight")
        if not is_router:
            continue
        with torch.no_grad():
            std = bias_std if leaf[-1] == "bias" else router_std
            param.copy_(torch.randn(param.shape, generator=generator) * std)
    for name, buffer in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            buffer.copy_(torch.randn(buffer.shape, generator=generator) * bias_std * 0.2)
    return model


def tiny_model(family: str, seed: int = 0, experts_implementation: str | None = None, **overrides) -> nn.Module:
    """A tiny random causal LM of ``family`` in eval mode, fp32, with sharpened routers."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(family, **overrides)
    torch.manual_seed(seed)
    kwargs = {} if experts_implementation is None else {"experts_implementation": experts_implementation}
    model = AutoModelForCausalLM.from_config(config, **kwargs)
    return sharpen_routers(model, seed).eval()
