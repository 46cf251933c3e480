"""TransformerLens's calls on :class:`~moelens.backends.nnsight.NNsightMoE`: the token verbs,
``return_type`` on ``model(...)``, and a clear refusal of ``generate``."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .._loss import check_return_type, shaped_output
from .._tokens import TokenMethods
from ..errors import BackendError

__all__ = ["NNsightCalls"]


class NNsightCalls(TokenMethods):
    """Mixin of ``NNsightMoE``: needs ``to_inputs`` and ``run_with_hooks``."""

    def __call__(
        self,
        inputs: Any,
        *,
        attention_mask: Tensor | None = None,
        stop_at_layer: int | None = None,
        return_type: str | None = "logits",
        loss_per_token: bool = False,
    ) -> Any:
        """Logits ``[batch pos d_vocab]`` (or the residual stream entering ``stop_at_layer``); with
        ``return_type`` "loss", "both" or None as :meth:`HookedMoE.forward <moelens.HookedMoE.forward>`.

        >>> import torch
        >>> from moelens.backends.nnsight import NNsightMoE
        >>> model = NNsightMoE.from_pretrained("moelens/mixtral-tiny")
        >>> model(model.to_tokens("What is 2 + 3?"), return_type="loss").shape
        torch.Size([])
        """
        return self.run_with_hooks(
            inputs, (), attention_mask=attention_mask, stop_at_layer=stop_at_layer, return_type=return_type, loss_per_token=loss_per_token
        )

    def _checked_inputs(self, inputs: Any, attention_mask: Tensor | None, return_type: Any, stop_at_layer: int | None,
                        loss_per_token: bool = False) -> Any:
        """Model inputs, after refusing a ``return_type`` this call cannot give."""
        check_return_type(return_type, None, stop_at_layer, loss_per_token)
        return self.to_inputs(inputs, attention_mask)

    @staticmethod
    def _shaped(out: Tensor, model_inputs: Any, stop_at_layer: int | None, return_type: Any, per_token: bool) -> Any:
        return out if stop_at_layer is not None else shaped_output(out, model_inputs, return_type, per_token)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """Not offered: moelens's hooks run inside one nnsight trace of one forward, and a generation
        with hooks at every step would need a trace per step. Use ``HookedMoE.generate`` (the same
        hook names and interventions), or nnsight's own ``model.nn_model.generate`` without moelens hooks.

        >>> from moelens.backends.nnsight import NNsightMoE
        >>> NNsightMoE.from_pretrained("moelens/mixtral-tiny").generate("Hi")
        Traceback (most recent call last):
        ...
        moelens.errors.BackendError: NNsightMoE.generate is not offered: moelens hooks run inside one nnsight trace of one forward. Use HookedMoE.generate (same hook names and interventions), or model.nn_model.generate without moelens hooks.
        """
        raise BackendError(
            "NNsightMoE.generate is not offered: moelens hooks run inside one nnsight trace of one forward. "
            "Use HookedMoE.generate (same hook names and interventions), or model.nn_model.generate without moelens hooks."
        )
