"""Token triggers of experts (:mod:`.run`: :func:`token_triggers`; :mod:`.result`:
:class:`TokenTriggers`, :class:`EarlyLate`)."""

from .result import EarlyLate, TokenTriggers
from .run import token_triggers

__all__ = ["EarlyLate", "TokenTriggers", "token_triggers"]
