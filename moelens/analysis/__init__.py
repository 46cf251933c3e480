"""Dataset-level analyses: routing statistics, driver experts, and their plots."""

from .agreement import Agreement, compare_effects
from .attribution import Attribution, token_attribution
from .drivers import DriverEffects, driver_effects
from .mediation import Mediation, logit_diff, routing_mediation
from .representations import ExpertRepresentations, expert_representations
from .routing_stats import RoutingStats, collect_routing_stats
from .triggers import EarlyLate, TokenTriggers, token_triggers

__all__ = [
    "Agreement",
    "Attribution",
    "DriverEffects",
    "EarlyLate",
    "ExpertRepresentations",
    "Mediation",
    "RoutingStats",
    "TokenTriggers",
    "collect_routing_stats",
    "compare_effects",
    "driver_effects",
    "expert_representations",
    "logit_diff",
    "routing_mediation",
    "token_attribution",
    "token_triggers",
]
