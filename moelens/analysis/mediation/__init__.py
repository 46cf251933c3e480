"""Causal mediation through routing (:mod:`.run`: definitions and the sweep; :mod:`.inputs`: pairs
and experts; :mod:`.result`: :class:`Mediation`)."""

from .result import Mediation
from .run import logit_diff, routing_mediation

__all__ = ["Mediation", "logit_diff", "routing_mediation"]
