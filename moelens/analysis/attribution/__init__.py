"""Which input tokens drive an expert's router logit (:mod:`.run`: :func:`token_attribution` and
:class:`Attribution`)."""

from .run import Attribution, token_attribution

__all__ = ["Attribution", "token_attribution"]
