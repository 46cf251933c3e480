"""moelens: mechanistic interpretability for Mixture-of-Experts language models.

>>> from moelens import HookedMoE
>>> from moelens.testing import tiny_model
>>> HookedMoE.from_hf(tiny_model("qwen2_moe")).cfg.n_shared_experts
1
"""

from .analysis import (
    Agreement,
    Attribution,
    DriverEffects,
    Mediation,
    RoutingStats,
    TokenTriggers,
    collect_routing_stats,
    compare_effects,
    driver_effects,
    routing_mediation,
    token_attribution,
    token_triggers,
)
from .cache import ActivationCache
from .errors import (
    BackendError,
    CheckpointError,
    ConcurrentUseError,
    DataNotFoundError,
    HookShapeError,
    InterventionError,
    InvalidInputError,
    ModelLoadError,
    MoelensError,
    NonFiniteError,
    ReadOnlyHookError,
    ResultFileError,
    UnknownHookError,
    UnsupportedArchitectureError,
)
from .hook_points import HookPoint
from .interventions import Ablate, Force, Patch, Perturb, Scale
from .model import HookedMoE, MoEConfig
from .tasks import EvalResult, StudyResult, TunedMoE, evaluate, reweighting_study, tune_router

__version__ = "0.1.0"

__all__ = [
    "Ablate",
    "ActivationCache",
    "CheckpointError",
    "ConcurrentUseError",
    "DataNotFoundError",
    "NonFiniteError",
    "Agreement",
    "Attribution",
    "BackendError",
    "DriverEffects",
    "EvalResult",
    "Force",
    "HookPoint",
    "HookShapeError",
    "HookedMoE",
    "InterventionError",
    "InvalidInputError",
    "Mediation",
    "MoEConfig",
    "ModelLoadError",
    "MoelensError",
    "Patch",
    "Perturb",
    "ReadOnlyHookError",
    "ResultFileError",
    "RoutingStats",
    "Scale",
    "StudyResult",
    "TokenTriggers",
    "TunedMoE",
    "UnknownHookError",
    "UnsupportedArchitectureError",
    "collect_routing_stats",
    "compare_effects",
    "driver_effects",
    "evaluate",
    "reweighting_study",
    "routing_mediation",
    "token_attribution",
    "token_triggers",
    "tune_router",
]


_SUBMODULES = ("viz", "patching", "utils")


def __getattr__(name: str):
    # `moelens.viz` is imported on first use (PEP 562): it pulls in circuitsvis, which costs
    # seconds, so `import moelens` stays cheap while `moelens.viz.routing_tokens(...)` still works;
    # moelens.patching and moelens.utils likewise work right after `import moelens`.
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"moelens.{name}")
    raise AttributeError(f"module 'moelens' has no attribute {name!r}")
