"""Dataset-level analyses: routing statistics, driver experts, and their plots."""

from .routing_stats import RoutingStats

__all__ = ["RoutingStats"]
