"""The one place where families are registered, and where HF module paths are resolved.

>>> spec_for_model_type("mixtral").routing.scoring
'softmax'
>>> "deepseek_v3" in supported_model_types()
True
"""

from __future__ import annotations

from torch import nn

from ..errors import UnsupportedArchitectureError
from .deepseek import DEEPSEEK_V1, DEEPSEEK_V2, DEEPSEEK_V3
from .mixtral import MINIMAX, MIXTRAL
from .others import GPT_OSS, GRANITEMOE, LLAMA4_TEXT, PHIMOE
from .qwen import OLMOE, QWEN2_MOE, QWEN3_MOE
from .spec import ArchitectureSpec

__all__ = ["SPECS", "spec_for_model", "spec_for_model_type", "supported_model_types", "resolve", "find_moe_layers"]

SPECS: tuple[ArchitectureSpec, ...] = (
    MIXTRAL,
    MINIMAX,
    QWEN2_MOE,
    QWEN3_MOE,
    OLMOE,
    DEEPSEEK_V1,
    DEEPSEEK_V2,
    DEEPSEEK_V3,
    GPT_OSS,
    GRANITEMOE,
    PHIMOE,
    LLAMA4_TEXT,
)
_BY_TYPE = {model_type: spec for spec in SPECS for model_type in spec.model_types}

_HOW_TO_ADD = (
    "To add a family, write a short ArchitectureSpec in moelens/architectures/ (module paths, routing "
    "rule, router output format) and register it in moelens/architectures/registry.py; see "
    "docs/architectures/adding.md."
)


def supported_model_types() -> list[str]:
    """Sorted list of every supported HF ``model_type``."""
    return sorted(_BY_TYPE)


def spec_for_model_type(model_type: str) -> ArchitectureSpec:
    """The spec registered for a ``model_type``; raises :class:`UnsupportedArchitectureError`."""
    spec = _BY_TYPE.get(model_type)
    if spec is None:
        raise UnsupportedArchitectureError(
            f"model_type {model_type!r} is not a supported MoE family (a dense model, or a family with "
            f"no spec yet). Supported: {', '.join(supported_model_types())}. {_HOW_TO_ADD}"
        )
    return spec


def spec_for_model(model: nn.Module) -> ArchitectureSpec:
    """The spec of an HF causal-LM instance, read from ``model.config.model_type``."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} has no `config.model_type`: moelens wraps HuggingFace transformers "
            f"causal-LM models (e.g. AutoModelForCausalLM.from_pretrained(...))."
        )
    return spec_for_model_type(model_type)


def resolve(root: nn.Module, path: str) -> nn.Module | None:
    """Follow a dotted path (``a.b|a.c`` lists candidates); None if no candidate exists."""
    for candidate in path.split("|"):
        module = root
        for part in candidate.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if module is not None:
            return module
    return None


def find_moe_layers(model: nn.Module, spec: ArchitectureSpec) -> tuple[int, ...]:
    """Indices of the decoder layers whose MoE block has a router (dense layers have none)."""
    layers = resolve(model, spec.layers)
    if layers is None:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} has no decoder layers at {spec.layers!r} although its model_type "
            f"{model.config.model_type!r} is registered; pass the causal-LM model (…ForCausalLM), not a "
            f"sub-module. {_HOW_TO_ADD}"
        )
    found = []
    for index, layer in enumerate(layers):
        block = resolve(layer, spec.moe_block)
        if block is not None and resolve(block, spec.router) is not None and resolve(block, spec.experts) is not None:
            found.append(index)
    if not found:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} ({model.config.model_type!r}) has no MoE layer: no decoder layer has a "
            f"router at {spec.moe_block}.{spec.router}. moelens needs a Mixture-of-Experts model."
        )
    return tuple(found)
