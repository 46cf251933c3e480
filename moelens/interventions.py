"""Interventions on routing: small frozen objects that compose in order and serialise to dicts.

Each intervention turns into ordinary ``(hook_name, fn)`` pairs (:meth:`Intervention.hooks`), so the
same objects work with ``run_with_interventions``, ``intervene`` and ``run_with_hooks``.

Selectors: ``layers`` takes an MoE layer index, a list of them, or ``"all"``; ``experts`` an index, a
list, ``"all"``, or a LongTensor ``[batch]`` with one target expert per batch row (a batched sweep
over many targets in one forward); ``positions`` an int, list, slice or None (all positions).
Non-negative positions index the sequence as given; negative positions count from the last real
(non-padding) token of each row, so ``-1`` is the answer position of every row whatever the padding.

>>> from moelens import HookedMoE
>>> from moelens.testing import tiny_model
>>> model = HookedMoE.from_hf(tiny_model("mixtral"))
>>> ids = torch.tensor([[5, 6, 7]])
>>> logits = model.run_with_interventions(ids, [Ablate(layers=0, experts=1), Scale(1, 2, factor=1.2)])
>>> Perturb.from_dict(Perturb(0, [1, 2]).to_dict()) == Perturb(0, [1, 2])
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Union

import torch
from torch import Tensor

from .errors import InterventionError
from .inputs import last_token_positions
from .names import moe_name, parse_hook_name

if TYPE_CHECKING:
    from .model import HookedMoE

__all__ = ["Intervention", "Perturb", "Scale", "Ablate", "Force", "Patch", "from_dict"]

LayerSel = Union[int, Sequence[int], Literal["all"]]
ExpertSel = Union[int, Sequence[int], Literal["all"], Tensor]
PosSel = Union[int, Sequence[int], slice, None]


def _freeze(value: Any) -> Any:
    """Lists become tuples so that the frozen dataclasses hash."""
    if isinstance(value, list):
        return tuple(value)
    return value


def _check_selector(name: str, value: Any, allow_tensor: bool = False) -> None:
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


class Intervention:
    """Base class: subclasses are frozen dataclasses that produce hooks for a model."""

    kind: ClassVar[str]

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _freeze(getattr(self, f.name)))
        self.validate()

    def validate(self) -> None:
        """Checks that need no model (types, finite numbers); model-dependent checks run in hooks()."""

    def hooks(self, model: HookedMoE) -> list[tuple[str, Callable]]:
        raise NotImplementedError

    # -- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """A JSON-ready dict; :func:`from_dict` inverts it."""
        return {"type": type(self).__name__, **{f.name: _encode(getattr(self, f.name)) for f in fields(self)}}

    @classmethod
    def from_dict(cls, data: dict) -> Intervention:
        return from_dict(data)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(repr(self.to_dict()))


def _encode(value: Any) -> Any:
    if isinstance(value, Tensor):
        return {"tensor": value.tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, slice):
        return {"slice": [value.start, value.stop, value.step]}
    if isinstance(value, tuple):
        return list(value)
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and "tensor" in value:
        return torch.tensor(value["tensor"], dtype=getattr(torch, value.get("dtype", "float32")))
    if isinstance(value, dict) and "slice" in value:
        return slice(*value["slice"])
    return value


def from_dict(data: dict) -> Intervention:
    """Rebuild any intervention from :meth:`Intervention.to_dict` output.

    >>> from_dict({"type": "Scale", "layers": 0, "experts": 1, "factor": 0.8, "on": "logits", "positions": None})
    Scale(layers=0, experts=1, factor=0.8, on='logits', positions=None)
    """
    classes = {cls.__name__: cls for cls in (Perturb, Scale, Ablate, Force, Patch)}
    kind = data.get("type")
    if kind not in classes:
        raise InterventionError(f"unknown intervention type {kind!r}; known: {', '.join(classes)}.")
    return classes[kind](**{k: _decode(v) for k, v in data.items() if k != "type"})


# -- target resolution ------------------------------------------------------------------------------


def _moe_layers(model: HookedMoE, layers: LayerSel, who: str) -> list[int]:
    valid = list(model.cfg.moe_layers)
    chosen = valid if layers == "all" else ([layers] if isinstance(layers, int) else list(layers))
    for layer in chosen:
        if layer not in valid:
            raise InterventionError(f"{who}: layer {layer} is not an MoE layer of this model; MoE layers are {valid}.")
    return chosen


def _expert_mask(model: HookedMoE, experts: ExpertSel, batch: int, who: str) -> Tensor:
    """Bool ``[batch n_experts]`` of the targeted experts of each row."""
    n = model.cfg.n_experts
    mask = torch.zeros(batch, n, dtype=torch.bool)
    if isinstance(experts, Tensor):
        if experts.shape[0] != batch:
            raise InterventionError(f"{who}: experts has {experts.shape[0]} entries but the batch has {batch} rows.")
        chosen = experts.long().cpu()
        _check_experts(chosen.tolist(), n, who)
        return mask.scatter_(1, chosen[:, None], True)
    chosen = list(range(n)) if experts == "all" else ([experts] if isinstance(experts, int) else list(experts))
    _check_experts(chosen, n, who)
    mask[:, chosen] = True
    return mask


def _check_experts(chosen: list[int], n: int, who: str) -> None:
    for expert in chosen:
        if not 0 <= expert < n:
            raise InterventionError(f"{who}: expert {expert} is out of range; this model has experts 0..{n - 1}.")


def _position_mask(positions: PosSel, attention_mask: Tensor, who: str) -> Tensor:
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
        return (arange >= lo[:, None]) & (arange < hi[:, None]) & ((arange - lo[:, None]) % step == 0)
    chosen = [positions] if isinstance(positions, int) else list(positions)
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


class _Targeted(Intervention):
    """Shared machinery of the (layers, experts, positions) interventions."""

    def _targets(self, model: HookedMoE, shape: torch.Size, device: torch.device | None = None) -> Tensor:
        """Bool ``[batch pos n_experts]`` of the targeted (position, expert) pairs for this call, on
        ``device`` (the hooked tensor's: layers spread by ``device_map`` live on several devices)."""
        batch = shape[0]
        attention_mask = model.current_attention_mask
        if attention_mask is None or attention_mask.shape != shape[:2]:
            attention_mask = torch.ones(shape[:2], dtype=torch.long)
        who = type(self).__name__
        positions = _position_mask(self.positions, attention_mask, who)
        experts = _expert_mask(model, self.experts, batch, who)
        return (positions[:, :, None] & experts[:, None, :]).to(device if device is not None else model.device)

    def validate(self) -> None:
        _check_selector("layers", self.layers)
        _check_selector("experts", self.experts, allow_tensor=True)
        if not (self.positions is None or isinstance(self.positions, (int, slice, tuple))) or isinstance(self.positions, bool):
            raise InterventionError(f"positions={self.positions!r}: pass an int, a list, a slice, or None.")

    def _on(self, model: HookedMoE, suffix: str, edit: Callable[[Tensor, Tensor], Tensor | None]) -> list[tuple[str, Callable]]:
        def fn(x: Tensor, hook) -> Tensor | None:
            return edit(x, self._targets(model, x.shape, x.device))

        return [(moe_name(layer, suffix), fn) for layer in _moe_layers(model, self.layers, type(self).__name__)]


def _selected_targets(targets: Tensor, index: Tensor) -> Tensor:
    """``[batch pos k]``: which slots hold a targeted expert."""
    return targets.gather(-1, index)


def _weights_edit(model: HookedMoE, owner: _Targeted, factor: float) -> list[tuple[str, Callable]]:
    """Multiply the applied weights of the targeted experts: reads the final top-k indices first."""
    seen: dict[str, Tensor] = {}
    hooks = []
    for layer in _moe_layers(model, owner.layers, type(owner).__name__):

        def remember(x, hook, layer=layer):
            seen[layer] = x  # the indices hook always fires before the weights hook of the same layer

        def scale(x, hook, layer=layer):
            chosen = _selected_targets(owner._targets(model, x.shape[:2] + (model.cfg.n_experts,), x.device), seen.pop(layer))
            return torch.where(chosen, x * factor, x)

        hooks += [(moe_name(layer, "hook_topk_indices"), remember), (moe_name(layer, "hook_topk_weights"), scale)]
    return hooks


@dataclass(frozen=True, eq=False, repr=True)
class Perturb(_Targeted):
    """Add ``sign * magnitude`` to the experts' router logits, then re-route by the family's rule.

    Softmax routers: the expert's probability changes by a factor ``e^(sign*magnitude)`` relative to
    the others. Sigmoid routers (DeepSeek-V3): the push is on the logit before the sigmoid, so its
    effect on the score shrinks where the sigmoid saturates. Top-k-then-softmax routers (GPT-OSS,
    Granite): the push changes both selection and the softmax over the selected logits.

    >>> Perturb(layers=1, experts=[0, 3], magnitude=2.0, positions=-1)
    Perturb(layers=1, experts=(0, 3), magnitude=2.0, sign=-1, positions=-1)
    """

    layers: LayerSel
    experts: ExpertSel
    magnitude: float = 1.0
    sign: int = -1
    positions: PosSel = None

    def validate(self) -> None:
        super().validate()
        if not (isinstance(self.magnitude, (int, float)) and math.isfinite(self.magnitude)):
            raise InterventionError(f"Perturb magnitude={self.magnitude!r} must be a finite number.")
        if self.sign not in (-1, 1):
            raise InterventionError(f"Perturb sign={self.sign!r} must be -1 or +1.")

    def hooks(self, model: HookedMoE) -> list[tuple[str, Callable]]:
        delta = self.sign * self.magnitude
        return self._on(model, "hook_router_logits", lambda x, targets: x + targets.to(x.dtype) * delta)


@dataclass(frozen=True, eq=False, repr=True)
class Scale(_Targeted):
    """Multiply the experts' router logits (``on="logits"``, the paper's 1.2 up / 0.8 down) or the
    weights applied to their outputs (``on="weights"``).

    Scaling a negative logit by 1.2 makes it *more* negative, i.e. down-weights the expert. If you
    mean "more of this expert" whatever the sign, use ``Perturb(sign=+1)`` (an additive push) or
    ``Scale(on="weights")``.

    >>> Scale(layers="all", experts=5, factor=1.2)  # the paper's up-weighting
    Scale(layers='all', experts=5, factor=1.2, on='logits', positions=None)
    """

    layers: LayerSel
    experts: ExpertSel
    factor: float = 1.0
    on: Literal["logits", "weights"] = "logits"
    positions: PosSel = None

    def validate(self) -> None:
        super().validate()
        if not (isinstance(self.factor, (int, float)) and math.isfinite(self.factor)):
            raise InterventionError(f"Scale factor={self.factor!r} must be a finite number.")
        if self.on not in ("logits", "weights"):
            raise InterventionError(f"Scale on={self.on!r} must be 'logits' or 'weights'.")

    def hooks(self, model: HookedMoE) -> list[tuple[str, Callable]]:
        if self.on == "weights":
            return _weights_edit(model, self, self.factor)
        return self._on(model, "hook_router_logits", lambda x, targets: torch.where(targets, x * self.factor, x))


@dataclass(frozen=True, eq=False, repr=True)
class Ablate(_Targeted):
    """``mode="route"``: never route to the experts (their logit becomes -inf, so the next-best expert
    takes the slot and weights are recomputed by the family's rule). ``mode="zero"``: keep the
    routing and zero the experts' applied weights, i.e. their contribution.

    >>> Ablate(layers=[0, 1], experts=2, mode="zero").to_dict()["mode"]
    'zero'
    """

    layers: LayerSel
    experts: ExpertSel
    mode: Literal["route", "zero"] = "route"
    positions: PosSel = None

    def validate(self) -> None:
        super().validate()
        if self.mode not in ("route", "zero"):
            raise InterventionError(f"Ablate mode={self.mode!r} must be 'route' or 'zero'.")

    def hooks(self, model: HookedMoE) -> list[tuple[str, Callable]]:
        if self.mode == "zero":
            return _weights_edit(model, self, 0.0)

        def silence(x: Tensor, targets: Tensor) -> Tensor:
            left = model.cfg.n_experts - int(targets.sum(-1).max())
            if left < model.cfg.top_k:
                raise InterventionError(
                    f"Ablate(route) leaves {left} experts at some position but top-{model.cfg.top_k} routing "
                    f"needs at least {model.cfg.top_k}; ablate fewer experts or use mode='zero'."
                )
            return x.masked_fill(targets, float("-inf"))

        return self._on(model, "hook_router_logits", silence)


@dataclass(frozen=True, eq=False, repr=True)
class Force(_Targeted):
    """Always route to the experts: where one is not selected, it replaces the selected expert with
    the lowest router logit, keeping that slot's weight.

    >>> Force(layers=0, experts=1, positions=slice(0, 4))
    Force(layers=0, experts=1, positions=slice(0, 4, None))
    """

    layers: LayerSel
    experts: ExpertSel
    positions: PosSel = None

    def hooks(self, model: HookedMoE) -> list[tuple[str, Callable]]:
        seen: dict[int, Tensor] = {}
        hooks = []
        for layer in _moe_layers(model, self.layers, "Force"):

            def remember(x, hook, layer=layer):
                seen[layer] = x.detach().clone()  # final (possibly edited) logits of this call

            def force(x, hook, layer=layer):
                logits = seen.pop(layer)
                targets = self._targets(model, logits.shape, logits.device)
                if int(targets.sum(-1).max()) > model.cfg.top_k:
                    raise InterventionError(f"Force targets more experts than top_k={model.cfg.top_k} at one position.")
                index = x.clone()
                for expert in targets.any(0).any(0).nonzero().flatten().tolist():
                    want = targets[..., expert] & ~(index == expert).any(-1)  # [batch pos]
                    slot_logits = logits.gather(-1, index).masked_fill(targets.gather(-1, index), float("inf"))
                    slot = slot_logits.argmin(-1, keepdim=True)  # lowest non-forced slot
                    index = torch.where(want[..., None], index.scatter(-1, slot, expert), index)
                return index

            hooks += [(moe_name(layer, "hook_router_logits"), remember), (moe_name(layer, "hook_topk_indices"), force)]
        return hooks


@dataclass(frozen=True, eq=False, repr=True)
class Patch(Intervention):
    """Replace the activation at ``hook_name`` with ``value`` (activation patching).

    ``value`` broadcasts against the activation from the right (``[d_model]``, ``[pos d_model]`` or the
    full ``[batch pos ...]``) and is cast to its dtype and device.

    >>> Patch("blocks.0.moe.hook_out", torch.zeros(32)).hook_name
    'blocks.0.moe.hook_out'
    """

    hook_name: str
    value: Tensor

    def validate(self) -> None:
        if parse_hook_name(self.hook_name) is None:
            raise InterventionError(f"Patch hook_name={self.hook_name!r} is not a hook name (see model.hook_names).")
        if not isinstance(self.value, Tensor):
            raise InterventionError(f"Patch value must be a tensor; got {type(self.value).__name__}.")

    def hooks(self, model: HookedMoE) -> list[tuple[str, Callable]]:
        model.hook_point(self.hook_name)  # unknown names raise with suggestions

        def patch(x: Tensor, hook) -> Tensor:
            try:
                value = self.value.to(device=x.device, dtype=x.dtype).expand_as(x)
            except RuntimeError:
                raise InterventionError(
                    f"Patch value of shape {tuple(self.value.shape)} does not broadcast to {self.hook_name!r} "
                    f"of shape {tuple(x.shape)}."
                ) from None
            return value.clone()

        return [(self.hook_name, patch)]

    def __hash__(self) -> int:
        return hash((self.hook_name, id(self.value)))


def expand(items: Sequence[Intervention | tuple], model: HookedMoE) -> list[tuple]:
    """Turn a list mixing interventions and ``(name, fn)`` pairs into ``(name, fn)`` pairs, in order."""
    if isinstance(items, Intervention):
        items = [items]
    pairs: list[tuple] = []
    for item in items:
        if isinstance(item, Intervention):
            pairs.extend(item.hooks(model))
        elif isinstance(item, tuple) and len(item) == 2:
            pairs.append(item)
        else:
            raise InterventionError(
                f"{item!r} is neither an intervention (Perturb, Scale, Ablate, Force, Patch) nor a (name, fn) pair."
            )
    return pairs
