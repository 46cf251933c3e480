"""Dataset-level analyses: routing statistics, driver experts, and their plots."""

from .agreement import Agreement, compare_effects
from .collect import collect_routing_stats
from .drivers import DriverEffects, driver_effects
from .routing_stats import RoutingStats

__all__ = ["Agreement", "DriverEffects", "RoutingStats", "collect_routing_stats", "compare_effects", "driver_effects"]
