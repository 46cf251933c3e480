"""Selectors of the interventions (layers, experts, positions): checked without a model when an
intervention is built, resolved to masks against a model and a call's attention mask."""

import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Union

import torch
from torch import Tensor

from .errors import InterventionError, InvalidInputError
from .inputs import last_token_positions

if TYPE_CHECKING:
    from .model import HookedMoE

__all__ = ["ExpertSel", "LayerSel", "PosSel", "check_positions", "check_selector", "expert_mask", "moe_layers", "position_mask",
           "resolve_expert", "resolve_experts", "resolve_layer", "resolve_layers"]

LayerSel = Union[int, Sequence[int], Literal["all"]]
ExpertSel = Union[int, Sequence[int], Literal["all"], Tensor]
PosSel = Union[int, Sequence[int], slice, None]


def check_selector(name: str, value: Any, allow_tensor: bool = False) -> None:
    if isinstance(value, str) and value == "all":
        return
    if isinstance(value, int) and not isinstance(value, bool):
        return
    if isinstance(value, tuple) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return
    if allow_tensor and isinstance(value, Tensor):
        if value.ndim != 1 or value.dtype not in (torch.int64, torch.int32):
            raise InterventionError(f"{name} as a tensor must be a LongTensor [batch]; got {value.dtype} {tuple(value.shape)}.")
        return
    raise InterventionError(f"{name}={value!r}: pass an int, a non-empty list of ints, or 'all'.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_index(value: Any) -> bool:
    """An int, or another integral number such as numpy's int64 (a DataFrame cell); not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positions(positions: Any) -> None:
    """An int, a list of ints, a slice of ints (or None bounds), or None; anything else is refused
    when the intervention is built (a float or a string would index nothing or fail deep inside).

    >>> check_positions(slice(0.5, 2))
    Traceback (most recent call last):
    ...
    moelens.errors.InterventionError: positions=slice(0.5, 2, None): slice bounds must be ints or None; got 0.5.
    """
    if positions is None or _is_int(positions):
        return
    if isinstance(positions, slice):
        for bound in (positions.start, positions.stop, positions.step):
            if bound is not None and not _is_int(bound):
                raise InterventionError(f"positions={positions!r}: slice bounds must be ints or None; got {bound!r}.")
        return
    if isinstance(positions, tuple):
        for position in positions:
            if not _is_int(position):
                raise InterventionError(f"positions={list(positions)!r}: every position must be an int; got {position!r}.")
        return
    raise InterventionError(f"positions={positions!r}: pass an int, a list of ints, a slice, or None.")


def resolve_layers(model: "HookedMoE", layers: Any, who: str = "layers", error: type[Exception] = InvalidInputError) -> list[int]:
    """The one parser of MoE-layer selectors (interventions, driver sweeps, mediation, views):
    ``None`` or ``"all"`` (every MoE layer), an MoE layer index, or a non-empty list of distinct ones,
    in the order given. Anything else raises ``error`` naming ``who``, the value and the valid layers.

    >>> from moelens import HookedMoE
    >>> from moelens.testing import tiny_model
    >>> model = HookedMoE.from_hf(tiny_model("deepseek_v3"))  # layer 0 is dense
    >>> resolve_layers(model, "all"), resolve_layers(model, 2)
    ([1, 2], [2])
    >>> resolve_layers(model, [0, 2])
    Traceback (most recent call last):
    ...
    moelens.errors.InvalidInputError: layers=[0, 2]: layer 0 is not an MoE layer of this model; MoE layers are [1, 2].
    """
    valid = list(model.cfg.moe_layers)
    if layers is None or (isinstance(layers, str) and layers == "all"):
        return valid
    chosen = [layers] if _is_index(layers) else list(layers) if isinstance(layers, (list, tuple)) else None
    if not chosen or not all(_is_index(layer) for layer in chosen):
        raise error(f"{who}={layers!r}: pass None/'all', an MoE layer index, or a non-empty list of them; MoE layers are {valid}.")
    chosen = [int(layer) for layer in chosen]
    bad = [layer for layer in chosen if layer not in valid]
    if bad:
        raise error(f"{who}={layers!r}: layer {bad[0]} is not an MoE layer of this model; MoE layers are {valid}.")
    if len(set(chosen)) != len(chosen):
        raise error(f"{who}={layers!r}: a layer is given twice; list each MoE layer once (MoE layers are {valid}).")
    return chosen


def resolve_layer(model: "HookedMoE", layer: Any, who: str = "layer") -> int:
    """One MoE layer index (not a list, not ``"all"``), checked as :func:`resolve_layers` checks each.

    >>> from moelens import HookedMoE
    >>> from moelens.testing import tiny_model
    >>> resolve_layer(HookedMoE.from_hf(tiny_model("mixtral")), True)
    Traceback (most recent call last):
    ...
    moelens.errors.InvalidInputError: layer=True: pass one MoE layer index (an int); MoE layers are [0, 1].
    """
    if not _is_index(layer):
        raise InvalidInputError(f"{who}={layer!r}: pass one MoE layer index (an int); MoE layers are {list(model.cfg.moe_layers)}.")
    return resolve_layers(model, layer, who)[0]


def moe_layers(model: "HookedMoE", layers: LayerSel, who: str) -> list[int]:
    """An intervention's layers (checked by :func:`check_selector` when it was built), resolved against ``model``."""
    return resolve_layers(model, layers, f"{who} layers", InterventionError)


def resolve_experts(model: "HookedMoE", experts: Any, who: str = "experts", error: type[Exception] = InvalidInputError) -> list[int]:
    """The one parser of expert selectors: ``None`` or ``"all"``, an expert index, or a non-empty list
    (or range) of them, in the order given; ``error`` names ``who``, the value and the valid range.

    >>> from moelens import HookedMoE
    >>> from moelens.testing import tiny_model
    >>> resolve_experts(HookedMoE.from_hf(tiny_model("mixtral")), [1, 4])
    Traceback (most recent call last):
    ...
    moelens.errors.InvalidInputError: experts=[1, 4]: expert 4 is out of range; this model has experts 0..3.
    """
    n = model.cfg.n_experts
    if experts is None or (isinstance(experts, str) and experts == "all"):
        return list(range(n))
    chosen = [experts] if _is_index(experts) else list(experts) if isinstance(experts, (list, tuple, range)) else None
    if not chosen or not all(_is_index(expert) for expert in chosen):
        raise error(f"{who}={experts!r}: pass None/'all', an expert index, or a non-empty list of them (0..{n - 1}).")
    chosen = [int(expert) for expert in chosen]
    bad = [expert for expert in chosen if not 0 <= expert < n]
    if bad:
        raise error(f"{who}={experts!r}: expert {bad[0]} is out of range; this model has experts 0..{n - 1}.")
    return chosen


def resolve_expert(model: "HookedMoE", expert: Any, who: str = "expert") -> int:
    """One expert index, checked as :func:`resolve_experts` checks each.

    >>> from moelens import HookedMoE
    >>> from moelens.testing import tiny_model
    >>> resolve_expert(HookedMoE.from_hf(tiny_model("mixtral")), 3)
    3
    """
    if not _is_index(expert):
        raise InvalidInputError(f"{who}={expert!r}: pass one expert index (an int, 0..{model.cfg.n_experts - 1}).")
    return resolve_experts(model, expert, who)[0]


def expert_mask(model: "HookedMoE", experts: ExpertSel, batch: int, who: str, device: torch.device) -> Tensor:
    """Bool ``[batch n_experts]`` of the targeted experts of each row, on ``device``."""
    n = model.cfg.n_experts
    mask = torch.zeros(batch, n, dtype=torch.bool)
    if isinstance(experts, Tensor):
        if experts.shape[0] != batch:
            raise InterventionError(f"{who}: experts has {experts.shape[0]} entries but the batch has {batch} rows.")
        chosen = experts.long().to(device)
        bad = (chosen < 0) | (chosen >= n)
        if bool(bad.any()):  # one check per call (the caller caches the targets for the call)
            resolve_experts(model, [int(chosen[bad][0])], f"{who} experts", InterventionError)
        return mask.to(device).scatter_(1, chosen[:, None], True)
    chosen = resolve_experts(model, experts, f"{who} experts", InterventionError)
    mask[:, chosen] = True
    return mask.to(device)


def position_mask(positions: PosSel, attention_mask: Tensor, who: str) -> Tensor:
    """Bool ``[batch pos]`` of the targeted positions; negative ones count from each row's last token."""
    batch, n_pos = attention_mask.shape
    if positions is None:
        return torch.ones(batch, n_pos, dtype=torch.bool)
    last = last_token_positions(attention_mask.cpu())  # [batch]
    arange = torch.arange(n_pos)
    if isinstance(positions, slice):
        start, stop, step = positions.start, positions.stop, positions.step or 1
        if step <= 0:
            raise InterventionError(f"{who}: positions slice needs a positive step; got {positions!r}.")

        def bound(value, default):
            if value is None:
                return default
            return (last + 1 + value) if value < 0 else torch.full((batch,), value)

        lo, hi = bound(start, torch.zeros(batch, dtype=torch.long)), bound(stop, torch.full((batch,), n_pos))
        selected = (arange >= lo[:, None]) & (arange < hi[:, None]) & ((arange - lo[:, None]) % step == 0)
        if not bool(selected.any(-1).all()):  # consistent with an int outside the sequence: an error, not a no-op
            raise InterventionError(
                f"{who}: positions={positions!r} selects no position of a row with {int((last + 1).min())} tokens "
                f"(positions 0..{n_pos - 1}); pass a slice that overlaps the sequence."
            )
        return selected
    chosen = [positions] if isinstance(positions, int) else list(positions)
    if not chosen:
        raise InterventionError(f"{who}: positions=[] selects nothing; pass None for every position, or some positions.")
    mask = torch.zeros(batch, n_pos, dtype=torch.bool)
    for position in chosen:
        absolute = last + 1 + position if position < 0 else torch.full((batch,), position)
        if bool(((absolute < 0) | (absolute >= n_pos)).any()):
            raise InterventionError(
                f"{who}: position {position} is outside the sequence; valid positions are 0..{n_pos - 1} "
                f"and -1..-{int((last + 1).min())} (from the last real token)."
            )
        mask[torch.arange(batch), absolute] = True
    return mask
