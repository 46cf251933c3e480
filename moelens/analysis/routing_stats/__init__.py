"""Routing statistics per (domain, MoE layer, expert) (:mod:`.run`: :func:`collect_routing_stats`;
:mod:`.result`: :class:`RoutingStats`; figures: :mod:`moelens.analysis.plots`)."""

from .result import SUM_FIELDS, RoutingStats
from .run import collect_routing_stats

__all__ = ["SUM_FIELDS", "RoutingStats", "collect_routing_stats"]
