"""MoE families described as data. See :mod:`moelens.architectures.registry`."""

from .registry import SPECS, find_moe_layers, resolve, spec_for_model, spec_for_model_type, supported_model_types
from .routing import Routing
from .spec import ADDITIVE, ArchitectureSpec, ExpertLayout, ResidualForm, RouterIO, RouterOutput, RoutingRule

__all__ = [
    "ADDITIVE",
    "SPECS",
    "ArchitectureSpec",
    "ResidualForm",
    "ExpertLayout",
    "RouterIO",
    "RouterOutput",
    "Routing",
    "RoutingRule",
    "find_moe_layers",
    "resolve",
    "spec_for_model",
    "spec_for_model_type",
    "supported_model_types",
]
