"""Inputs of :func:`moelens.analysis.mediation.routing_mediation`: pairs, experts, their digest."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from torch import Tensor

from moelens._selectors import resolve_experts
from moelens._tokens import attached_mask
from moelens.errors import InvalidInputError

if TYPE_CHECKING:
    from moelens.model import HookedMoE

__all__ = ["experts_list", "pairs_digest", "token_pairs"]


def _as_rows(model: HookedMoE, inputs: Any, name: str) -> tuple[list[Tensor], list[str] | None]:
    """One 1-D LongTensor per input (texts tokenized one by one: no padding)."""
    if isinstance(inputs, str):
        inputs = [inputs]
    if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(t, str) for t in inputs):
        return [model.to_tokens(text, truncate=False)[0].cpu() for text in inputs], list(inputs)
    if isinstance(inputs, Tensor) and inputs.ndim in (1, 2) and not inputs.dtype.is_floating_point:
        rows = inputs[None] if inputs.ndim == 1 else inputs
        mask = attached_mask(inputs)  # ids from to_tokens: drop each row's padding
        if mask is not None:
            return [row[real].long().cpu() for row, real in zip(rows, mask.bool(), strict=True)], None
        return [row.long().cpu() for row in rows], None
    if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(t, Tensor) and t.ndim == 1 for t in inputs):
        return [t.long().cpu() for t in inputs], None
    raise InvalidInputError(
        f"{name} must be a text, a non-empty list of texts, a LongTensor [batch pos] or a list of 1-D LongTensors; "
        f"got {type(inputs).__name__}."
    )


def token_pairs(model: HookedMoE, clean: Any, corrupted: Any) -> list[tuple[Tensor, Tensor]]:
    """``(clean_ids, corrupted_ids)`` per pair, 1-D; a pair of two lengths raises naming the pair."""
    clean_rows, clean_texts = _as_rows(model, clean, "clean")
    corrupt_rows, corrupt_texts = _as_rows(model, corrupted, "corrupted")
    if len(clean_rows) != len(corrupt_rows):
        raise InvalidInputError(f"clean has {len(clean_rows)} inputs but corrupted has {len(corrupt_rows)}; pass one corrupted input per clean one.")
    for i, (a, b) in enumerate(zip(clean_rows, corrupt_rows, strict=True)):
        if len(a) != len(b):
            shown = f" ({clean_texts[i]!r} vs {corrupt_texts[i]!r})" if clean_texts and corrupt_texts else ""
            raise InvalidInputError(
                f"pair {i}: clean has {len(a)} tokens and corrupted has {len(b)}{shown}. Routing is patched position "
                "by position, so both inputs of a pair must tokenize to the same length (change words that "
                "tokenize alike, e.g. ' good' -> ' bad')."
            )
        if len(a) == 0:
            raise InvalidInputError(f"pair {i} is empty (0 tokens).")
    return list(zip(clean_rows, corrupt_rows, strict=True))


def experts_list(model: HookedMoE, experts: Any) -> list[int]:
    """Sorted expert indices: None/'all', one index or a list (:func:`moelens._selectors.resolve_experts`)."""
    return sorted(set(resolve_experts(model, experts)))


def pairs_digest(pairs: list[tuple[Tensor, Tensor]]) -> str:
    """SHA-256 over every pair's token ids (a checkpoint's ``pairs``)."""
    return hashlib.sha256(b"".join(a.numpy().tobytes() + b"|" + b.numpy().tobytes() + b"#" for a, b in pairs)).hexdigest()
