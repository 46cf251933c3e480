"""moelens: mechanistic interpretability for Mixture-of-Experts language models.

>>> from moelens import HookedMoE
>>> from moelens.testing import tiny_model
>>> HookedMoE.from_hf(tiny_model("qwen2_moe")).cfg.n_shared_experts
1
"""

from .analysis import Agreement, DriverEffects, RoutingStats, collect_routing_stats, compare_effects, driver_effects
from .cache import ActivationCache
from .errors import (
    CheckpointError,
    HookShapeError,
    InterventionError,
    InvalidInputError,
    ModelLoadError,
    MoelensError,
    ReadOnlyHookError,
    ResultFileError,
    UnknownHookError,
    UnsupportedArchitectureError,
)
from .hook_points import HookPoint
from .interventions import Ablate, Force, Patch, Perturb, Scale
from .model import HookedMoE, MoEConfig

__version__ = "0.1.0"

__all__ = [
    "Ablate",
    "Force",
    "Patch",
    "Perturb",
    "Scale",
    "ActivationCache",
    "CheckpointError",
    "Agreement",
    "DriverEffects",
    "HookPoint",
    "HookShapeError",
    "HookedMoE",
    "InterventionError",
    "InvalidInputError",
    "ModelLoadError",
    "MoEConfig",
    "MoelensError",
    "ReadOnlyHookError",
    "ResultFileError",
    "RoutingStats",
    "UnknownHookError",
    "UnsupportedArchitectureError",
    "collect_routing_stats",
    "compare_effects",
    "driver_effects",
]
