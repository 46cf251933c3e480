"""``return_type`` and the next-token loss of the entry points (TransformerLens's names)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import InvalidInputError

__all__ = ["RETURN_TYPES", "check_return_type", "lm_loss", "shaped_output"]

RETURN_TYPES = ("logits", "loss", "both", None)


def check_return_type(return_type: Any, start_at_layer: int | None = None, stop_at_layer: int | None = None,
                      loss_per_token: bool = False) -> None:
    """Refuse an unknown ``return_type``, a loss where there are no logits or no token ids, and
    ``loss_per_token=True`` without a loss (TransformerLens ignores it there; we say so instead)."""
    if return_type not in RETURN_TYPES:
        raise InvalidInputError(f"return_type={return_type!r}: pass 'logits', 'loss', 'both' or None.")
    if loss_per_token and return_type not in ("loss", "both"):
        raise InvalidInputError(f"loss_per_token=True shapes a loss, but return_type={return_type!r} returns none; "
                                "pass return_type='loss' or 'both'.")
    if return_type in ("loss", "both") and stop_at_layer is not None:
        raise InvalidInputError(
            f"return_type={return_type!r} needs logits, but stop_at_layer={stop_at_layer} returns the residual stream."
        )
    if return_type in ("loss", "both") and start_at_layer is not None:
        raise InvalidInputError(
            f"return_type={return_type!r} needs the token ids as targets, but with start_at_layer the input is a "
            "residual stream; compute the loss from the logits with moelens._loss.lm_loss(logits, ids, mask)."
        )


def lm_loss(logits: Tensor, ids: Tensor, attention_mask: Tensor | None = None, per_token: bool = False) -> Tensor:
    """Next-token cross-entropy of ``logits [batch pos d_vocab]`` on ``ids [batch pos]``, in fp32.

    A pair (position t predicts t+1) counts when both tokens are real (mask 1). The mean is over those
    pairs, as HF's ``labels=`` loss with padding labelled -100; ``per_token=True`` gives
    ``[batch pos-1]`` with 0 on pairs that involve padding.

    >>> logits = torch.zeros(1, 3, 5)  # uniform over 5 tokens
    >>> round(lm_loss(logits, torch.tensor([[1, 2, 3]])).item(), 4)  # log(5)
    1.6094
    >>> lm_loss(logits, torch.tensor([[1, 2, 0]]), torch.tensor([[1, 1, 0]]), per_token=True)
    tensor([[1.6094, 0.0000]])
    """
    if ids.shape[-1] < 2:
        raise InvalidInputError(f"the loss needs at least 2 tokens per row (a target for a prediction); got shape {tuple(ids.shape)}.")
    targets = ids[:, 1:].to(logits.device)
    valid = torch.ones_like(targets, dtype=torch.bool)
    if attention_mask is not None:
        mask = attention_mask.to(logits.device).bool()
        valid = mask[:, 1:] & mask[:, :-1]
    targets = targets.masked_fill(~valid, -100)
    per_pair = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=-100, reduction="none")
    if per_token:
        return per_pair  # [batch pos-1], 0 where ignored
    return per_pair.sum() / valid.sum()


def shaped_output(logits: Tensor, model_inputs: Any, return_type: str | None, per_token: bool) -> Any:
    """What an entry point returns for ``return_type``: logits, loss, ``(logits, loss)`` or None."""
    if return_type == "logits":
        return logits
    if return_type is None:
        return None
    loss = lm_loss(logits, model_inputs.input_ids, model_inputs.attention_mask, per_token)
    return loss if return_type == "loss" else (logits, loss)
