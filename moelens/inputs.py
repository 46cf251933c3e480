"""Turning user inputs (texts or token ids, optional mask) into validated model inputs."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .errors import InvalidInputError

__all__ = ["ModelInputs", "check_max_length", "checked_mask", "prepare_inputs", "warn_if_too_long", "last_token_positions", "layer_range", "check_last_axis"]


@dataclass
class ModelInputs:
    """Token ids (or a residual stream for ``start_at_layer``) with the mask and positions to use."""

    input_ids: Tensor | None  # [batch pos] int64
    attention_mask: Tensor  # [batch pos] int64, 1 on real tokens
    position_ids: Tensor | None  # [batch pos]; None means HF's default arange (no padding)
    inputs_embeds: Tensor | None = None  # [batch pos d_model]
    padded: bool = False

    def hf_kwargs(self) -> dict:
        kwargs: dict = {"use_cache": False}
        if self.inputs_embeds is not None:
            kwargs["inputs_embeds"] = self.inputs_embeds
        else:
            kwargs["input_ids"] = self.input_ids
        if self.padded:
            kwargs["attention_mask"] = self.attention_mask
        if self.position_ids is not None:
            kwargs["position_ids"] = self.position_ids
        return kwargs


def prepare_inputs(
    inputs, attention_mask: Tensor | None, tokenizer, vocab_size: int, device: torch.device, max_length: int | None = None
) -> ModelInputs:
    """Tokenize texts (padding them; truncated to their first ``max_length`` tokens when given) or
    validate token ids (used as given); build the attention mask and positions."""
    if isinstance(inputs, str):
        inputs = [inputs]
    if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(t, str) for t in inputs):
        if tokenizer is None:
            raise InvalidInputError(
                "texts were given but this model has no tokenizer; pass token ids, or wrap with "
                "HookedMoE.from_hf(model, tokenizer=AutoTokenizer.from_pretrained(...))."
            )
        if attention_mask is not None:
            raise InvalidInputError("attention_mask= goes with token ids; for texts moelens builds the mask itself.")
        check_max_length(max_length)
        truncate = {"truncation": True, "max_length": max_length} if max_length is not None else {}
        encoded = tokenizer(list(inputs), return_tensors="pt", padding=True, **truncate)
        return _with_mask(encoded["input_ids"], encoded["attention_mask"], device)
    if isinstance(inputs, (list, tuple)) and not inputs:
        raise InvalidInputError("inputs is an empty list; pass at least one text or a [batch pos] tensor of token ids.")
    if not isinstance(inputs, Tensor):
        raise InvalidInputError(
            f"inputs must be a str, a list of str, or a LongTensor [batch pos] of token ids; got {type(inputs).__name__}."
        )
    ids = inputs
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise InvalidInputError(
            f"token ids must be integers, got dtype {ids.dtype}; for a residual stream use start_at_layer=."
        )
    if ids.is_meta:
        raise InvalidInputError("token ids are a meta tensor (a shape without values); pass real ids, e.g. ids.to('cpu') of a real tensor.")
    if ids.dtype != torch.long:  # uint8/int16/int32 ids are ids: the embedding takes int64 (documented)
        ids = ids.long()
    if ids.ndim == 1:
        ids = ids.unsqueeze(0)
    if ids.ndim != 2:
        raise InvalidInputError(f"token ids must have shape [batch pos]; got {tuple(inputs.shape)}.")
    if ids.numel() == 0:
        raise InvalidInputError(
            f"token ids of shape {tuple(inputs.shape)} hold no token; pass at least one row with one token."
        )
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise InvalidInputError(
            f"token id {int(ids.max()) if int(ids.max()) >= vocab_size else int(ids.min())} is outside the "
            f"vocabulary [0, {vocab_size - 1}]."
        )
    return _with_mask(ids, attention_mask, device)


def check_max_length(max_length: Any) -> None:
    """``max_length`` is None (no truncation) or an int >= 1 (0 would silently not truncate).

    >>> check_max_length(0)
    Traceback (most recent call last):
    ...
    moelens.errors.InvalidInputError: max_length=0 must be an int >= 1, or None for no truncation.
    """
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
        raise InvalidInputError(f"max_length={max_length!r} must be an int >= 1, or None for no truncation.")


def warn_if_too_long(n_positions: int, limit: Any) -> None:
    """Warn (once per model and place) when inputs are longer than the positions the model was
    trained for: rotary models run on but out of distribution, learned positions fail later."""
    if isinstance(limit, int) and n_positions > limit:
        warnings.warn(
            f"inputs are longer than the {limit} positions this model was trained for "
            f"(config.max_position_embeddings); positions beyond {limit} are out of distribution. Pass "
            "shorter inputs, or truncate texts with max_length= (collect_routing_stats, driver_effects, to_tokens).",
            stacklevel=4,
        )


def prepare_residual(resid: Tensor, attention_mask: Tensor | None, d_model: int, device: torch.device) -> ModelInputs:
    """Validate a residual stream given to ``start_at_layer``."""
    if not isinstance(resid, Tensor) or resid.ndim != 3 or resid.shape[-1] != d_model:
        shape = tuple(resid.shape) if isinstance(resid, Tensor) else type(resid).__name__
        raise InvalidInputError(
            f"with start_at_layer the input is the residual stream [batch pos d_model={d_model}]; got {shape}."
        )
    inputs = _with_mask(None, attention_mask, device, shape=resid.shape[:2])
    inputs.inputs_embeds = resid.to(device)
    return inputs


def checked_mask(attention_mask: Any, shape: tuple[int, ...]) -> Tensor:
    """The attention mask as int64 ``[batch pos]`` (all ones when None), after checking that it is a
    tensor of the inputs' ``shape`` holding only 0 and 1 with at least one token per row.

    >>> checked_mask(torch.tensor([[1.0, 0.5]]), (1, 2))
    Traceback (most recent call last):
    ...
    moelens.errors.InvalidInputError: attention_mask must hold only 0 (padding) and 1 (token); got 0.5.
    """
    if attention_mask is None:
        return torch.ones(shape, dtype=torch.long)
    if not isinstance(attention_mask, Tensor):
        raise InvalidInputError(
            f"attention_mask must be a tensor [batch pos] of 0/1, got {type(attention_mask).__name__}; "
            "wrap it in torch.tensor(...)."
        )
    if tuple(attention_mask.shape) != tuple(shape):
        raise InvalidInputError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but the inputs have shape {tuple(shape)}."
        )
    bad = (attention_mask != 0) & (attention_mask != 1)  # before .long() turns 0.5 into 0
    if bool(bad.any()):
        raise InvalidInputError(f"attention_mask must hold only 0 (padding) and 1 (token); got {attention_mask[bad][0].item()!r}.")
    mask = attention_mask.long()
    if bool((mask.sum(-1) == 0).any()):
        raise InvalidInputError("a row of attention_mask has no token (all zeros); drop that row.")
    return mask


def _with_mask(ids, attention_mask, device, shape=None) -> ModelInputs:
    shape = tuple(ids.shape) if ids is not None else tuple(shape)
    mask = checked_mask(attention_mask, shape).to(device)
    position_ids = None
    padded = not bool(mask.all())
    if padded and bool((mask[:, 1:] > mask[:, :-1]).any()):
        # A pad before a real token (left padding): HF's default positions (arange) would shift the
        # real tokens, so give each token its index among the real tokens of its row. Right padding
        # keeps HF's own positions, which keeps the real tokens bit-identical to HF with that mask.
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return ModelInputs(ids.to(device) if ids is not None else None, mask, position_ids, padded=padded)


def last_token_positions(attention_mask: Tensor) -> Tensor:
    """Index of the last real token of each row ``[batch]`` (works for left and right padding).

    >>> last_token_positions(torch.tensor([[1, 1, 0], [0, 1, 1]])).tolist()
    [1, 2]
    """
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (attention_mask.bool() * (positions + 1)).argmax(-1)


def layer_range(n_layers: int, start_at_layer: int | None, stop_at_layer: int | None) -> tuple[int | None, int | None]:
    """Validated ``(start, stop)`` layer indices (negative ones count from the end; None stays None).

    >>> layer_range(4, -1, None), layer_range(4, 0, 4)
    ((3, None), (0, 4))
    """
    start = _check_layer(start_at_layer, "start_at_layer", n_layers, 0, n_layers - 1)
    stop = _check_layer(stop_at_layer, "stop_at_layer", n_layers, 0, n_layers)
    if start is not None and stop is not None and stop <= start:
        raise InvalidInputError(f"stop_at_layer={stop} must be greater than start_at_layer={start}.")
    return start, stop


def _check_layer(value: int | None, name: str, n_layers: int, low: int, high: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{name} must be an int in [{low}, {high}]; got {value!r}.")
    resolved = value + n_layers if value < 0 else value
    if not low <= resolved <= high:
        raise InvalidInputError(f"{name}={value} is out of range; this model takes [{low}, {high}].")
    return resolved


def check_last_axis(tensor: Any, name: str, axis: str, size: int, ndim: int | None = None) -> None:
    """Refuse anything but a tensor ``[... axis=size]`` (with exactly ``ndim`` axes when given).

    >>> check_last_axis(torch.zeros(2, 5), "resid", "d_model", 4)
    Traceback (most recent call last):
    ...
    moelens.errors.InvalidInputError: resid must be [... d_model=4]; got (2, 5).
    """
    shape = tuple(tensor.shape) if isinstance(tensor, Tensor) else None
    if shape is None or not shape or shape[-1] != size or (ndim is not None and len(shape) != ndim):
        layout = f"[{'batch pos ' if ndim == 3 else '... '}{axis}={size}]"
        raise InvalidInputError(f"{name} must be {layout}; got {shape if shape is not None else type(tensor).__name__}.")
