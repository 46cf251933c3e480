"""What experts compute, embedded and clustered (:mod:`.run`: :func:`expert_representations` and
:class:`ExpertRepresentations`)."""

from .run import ExpertRepresentations, expert_representations

__all__ = ["ExpertRepresentations", "expert_representations"]
