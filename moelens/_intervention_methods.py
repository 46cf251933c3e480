"""HookedMoE's intervention entry points: ``run_with_interventions`` and the ``intervene`` block.

Interventions (:mod:`moelens.interventions`) are hook pairs, so both go through ``run_with_hooks`` / ``hooks``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor


def as_list(interventions: Any) -> list:
    """One intervention or a list/tuple of them, as a list.

    >>> as_list("x"), as_list(("x", "y"))
    (['x'], ['x', 'y'])
    """
    return list(interventions) if isinstance(interventions, (list, tuple)) else [interventions]


class InterventionMethods:
    """Mixed into :class:`~moelens.HookedMoE` (which supplies ``run_with_hooks`` and ``hooks``)."""

    def run_with_interventions(
        self,
        inputs: str | list[str] | Tensor,
        interventions: Any,
        *,
        attention_mask: Tensor | None = None,
        **forward_kwargs,
    ) -> Tensor:
        """Run with interventions (one, or a list applied in order) active for this call only.

        >>> import torch
        >>> from moelens import HookedMoE
        >>> from moelens.interventions import Ablate
        >>> from moelens.testing import tiny_model
        >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
        >>> model.run_with_interventions(torch.tensor([[1, 2]]), [Ablate(0, 3)]).shape
        torch.Size([1, 2, 97])
        """
        return self.run_with_hooks(inputs, as_list(interventions), attention_mask=attention_mask, **forward_kwargs)

    @contextmanager
    def intervene(self, *interventions: Any) -> Iterator[InterventionMethods]:
        """Context manager: interventions active for every call inside the block."""
        items = [item for group in interventions for item in as_list(group)]
        with self.hooks(items):
            yield self
