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
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor

from ._intervention_codec import decode_field, encode_field
from ._selectors import (
    ExpertSel,
    LayerSel,
    PosSel,
    check_positions,
    check_selector,
    expert_mask,
    moe_layers,
    position_mask,
)
from .errors import InterventionError
from .hook_points import HookPoint, expand
from .names import moe_name, parse_hook_name

if TYPE_CHECKING:
    from .model import HookedMoE

__all__ = ["Ablate", "Force", "Intervention", "Patch", "Perturb", "Scale", "expand", "from_dict"]


def _freeze(value: Any) -> Any:
    """Lists become tuples so that the frozen dataclasses hash."""
    if isinstance(value, list):
        return tuple(value)
    return value


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
        """The ``(hook name, fn)`` pairs that apply this intervention to ``model`` (subclasses)."""
        raise InterventionError(f"{type(self).__name__} does not implement hooks(model); subclass an intervention.")

    # -- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """A JSON-ready dict; :func:`from_dict` inverts it."""
        return {"type": type(self).__name__, **{f.name: encode_field(getattr(self, f.name)) for f in fields(self)}}

    @classmethod
    def from_dict(cls, data: dict) -> Intervention:
        return from_dict(data)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(repr(self.to_dict()))


def from_dict(data: dict) -> Intervention:
    """Rebuild any intervention from :meth:`Intervention.to_dict` output.

    >>> from_dict({"type": "Scale", "layers": 0, "experts": 1, "factor": 0.8, "on": "logits", "positions": None})
    Scale(layers=0, experts=1, factor=0.8, on='logits', positions=None)
    """
    classes = {cls.__name__: cls for cls in (Perturb, Scale, Ablate, Force, Patch)}
    if not isinstance(data, dict):
        raise InterventionError(f"from_dict takes a dict written by to_dict(); got {type(data).__name__}.")
    kind = data.get("type")
    if kind not in classes:
        raise InterventionError(f"unknown intervention type {kind!r}; known: {', '.join(classes)}.")
    known = {f.name: f for f in fields(classes[kind])}
    unknown = sorted(set(data) - set(known) - {"type"}, key=str)
    missing = [name for name, f in known.items() if name not in data and f.default is MISSING and f.default_factory is MISSING]
    if unknown or missing:
        problem = f"unknown key(s) {unknown}" if unknown else f"missing key(s) {missing}"
        raise InterventionError(f"{kind} from_dict: {problem}; its fields are {list(known)} (see {kind}.to_dict()).")
    return classes[kind](**{k: decode_field(v) for k, v in data.items() if k != "type"})


def _check_number(what: str, value: Any, hint: str) -> None:
    """A finite, non-negative real number (not a bool, a tensor or NaN), named in the error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InterventionError(f"{what}={value!r} must be a finite number >= 0.")
    if value < 0:
        raise InterventionError(f"{what}={value!r} is negative; it must be >= 0 ({hint}).")


class _Targeted(Intervention):
    """Shared machinery of the (layers, experts, positions) interventions."""

    def _targets(self, model: HookedMoE, hook: HookPoint, like: Tensor) -> Tensor:
        """Bool ``[batch pos n_experts]`` of the targeted (position, expert) pairs for this call, on
        ``like``'s device; built (and tensor selectors validated) once per call, not per layer."""
        shape = tuple(like.shape[:2])
        key = (id(self), "targets", shape)
        scratch = hook.call.scratch
        if key not in scratch:
            attention_mask = hook.call.attention_mask
            if attention_mask is None or tuple(attention_mask.shape) != shape:
                attention_mask = torch.ones(shape, dtype=torch.long)
            who = type(self).__name__
            positions = position_mask(self.positions, attention_mask, who).to(like.device)
            experts = expert_mask(model, self.experts, shape[0], who, like.device)
            scratch[key] = positions[:, :, None] & experts[:, None, :]
        return scratch[key]

    def validate(self) -> None:
        check_selector("layers", self.layers)
        check_selector("experts", self.experts, allow_tensor=True)
        check_positions(self.positions)

    def _on(self, model: HookedMoE, suffix: str, edit: Callable[[Tensor, Tensor], Tensor | None]) -> list[tuple[str, Callable]]:
        def fn(x: Tensor, hook: HookPoint) -> Tensor | None:
            return edit(x, self._targets(model, hook, x))

        return [(moe_name(layer, suffix), fn) for layer in moe_layers(model, self.layers, type(self).__name__)]


def _selected_targets(targets: Tensor, index: Tensor) -> Tensor:
    """``[batch pos k]``: which slots hold a targeted expert."""
    return targets.gather(-1, index)


def _weights_edit(model: HookedMoE, owner: _Targeted, factor: float) -> list[tuple[str, Callable]]:
    """Multiply the applied weights of the targeted experts: reads the final top-k indices first."""
    token = object()  # this expansion's key in the call's scratch (the same object may be listed twice)

    def remember(x: Tensor, hook: HookPoint) -> None:
        # The indices hook always fires before the weights hook of the same layer.
        hook.call.scratch[(token, hook.layer)] = x

    def scale(x: Tensor, hook: HookPoint) -> Tensor:
        index = hook.call.scratch.pop((token, hook.layer))
        chosen = _selected_targets(owner._targets(model, hook, x), index)
        return torch.where(chosen, x * factor, x)

    hooks: list[tuple[str, Callable]] = []
    for layer in moe_layers(model, owner.layers, type(owner).__name__):
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
        _check_number("Perturb magnitude", self.magnitude, "the direction is sign=-1 or +1")
        if isinstance(self.sign, bool) or self.sign not in (-1, 1):  # True == 1 to Python, never a sign to a person
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
        _check_number("Scale factor", self.factor, "a factor below 1 scales down; to push an expert away use Perturb")
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
        token = object()  # this expansion's key in the call's scratch (the same object may be listed twice)

        def remember(x: Tensor, hook: HookPoint) -> None:
            # the final (possibly edited) logits of this call; the indices hook of the layer follows
            hook.call.scratch[(token, hook.layer)] = x.detach().clone()

        def force(x: Tensor, hook: HookPoint) -> Tensor:
            logits = hook.call.scratch.pop((token, hook.layer))
            targets = self._targets(model, hook, logits)
            # experts forced by an earlier Force of this call at this layer keep their slots too
            forced = hook.call.scratch.get(("forced", hook.layer))
            forced = targets if forced is None else forced | targets
            if int(forced.sum(-1).max()) > model.cfg.top_k:
                chosen = forced.any(0).any(0).nonzero().flatten().tolist()
                raise InterventionError(
                    f"Force targets {int(forced.sum(-1).max())} experts ({chosen}) at one position of layer {hook.layer}, more than "
                    f"top_k={model.cfg.top_k} (counting every Force on that layer in this call); force at most {model.cfg.top_k} "
                    "experts per position, or split them over positions=."
                )
            hook.call.scratch[("forced", hook.layer)] = forced
            index = x.clone()
            for expert in targets.any(0).any(0).nonzero().flatten().tolist():
                want = targets[..., expert] & ~(index == expert).any(-1)  # [batch pos]
                slot_logits = logits.gather(-1, index).masked_fill(forced.gather(-1, index), float("inf"))
                slot = slot_logits.argmin(-1, keepdim=True)  # lowest non-forced slot
                index = torch.where(want[..., None], index.scatter(-1, slot, expert), index)
            return index

        hooks: list[tuple[str, Callable]] = []
        for layer in moe_layers(model, self.layers, "Force"):
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
        if self.value.is_floating_point() and not bool(torch.isfinite(self.value).all()):  # once, when built
            blocks = self.hook_name.endswith("hook_router_logits")  # -inf there means "never route here"
            bad = self.value.isnan() | (self.value == float("inf")) | (~blocks & (self.value == float("-inf")))
            if bool(bad.any()):
                what = "NaN" if bool(self.value.isnan().any()) else "inf"
                raise InterventionError(f"Patch value for {self.hook_name!r} holds {what}; patch finite values (a NaN or inf "
                                        "spreads to every later activation; -inf is accepted on hook_router_logits only).")

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
            if not x.is_floating_point() and self.value.is_floating_point() and bool((self.value != self.value.round()).any()):
                bad = self.value[self.value != self.value.round()].flatten()[0].item()
                raise InterventionError(f"Patch value for {self.hook_name!r} holds {bad}, but that activation holds integers "
                                        f"({x.dtype}); pass whole numbers (expert indices), e.g. a LongTensor.")
            return value.clone()

        return [(self.hook_name, patch)]

    def __hash__(self) -> int:
        # Equal patches (same name, same values) must hash equal; shape and dtype are cheap and
        # follow from equal values, unlike id(value).
        return hash((self.hook_name, tuple(self.value.shape), str(self.value.dtype)))

