"""Dataset-level analyses: routing statistics, driver experts, and their plots."""

from .collect import collect_routing_stats
from .routing_stats import RoutingStats

__all__ = ["RoutingStats", "collect_routing_stats"]
