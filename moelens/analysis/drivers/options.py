"""The sweep's arguments, checked once and frozen into :class:`SweepOptions`, and its inputs served
batch by batch (:class:`SweepInputs`)."""

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor

from moelens._selectors import resolve_layers
from moelens.errors import InvalidInputError
from moelens.inputs import prepare_inputs
from moelens.interventions import Perturb

if TYPE_CHECKING:
    from moelens.model import HookedMoE

__all__ = ["METHODS", "SweepInputs", "SweepOptions", "choice", "parse_layers", "parse_push", "positive_int"]

METHODS = ("exact", "first_order", "router_gradient")
POSITIONS = ("last", "all")
TARGETS = ("top", "sample")


@dataclass(frozen=True)
class SweepOptions:
    """Everything a per-batch kernel needs besides the batch itself.

    ``push`` is a ``Perturb("all", "all", magnitude, sign)`` template: :meth:`at` gives the push of
    one layer with one target expert per batch row.

    >>> import torch
    >>> options = SweepOptions("exact", parse_push((2.0, 1)), "last", (0, 1))
    >>> options.delta, options.at(1, torch.tensor([3])).layers
    (2.0, 1)
    """

    method: str
    push: Perturb
    positions: str  # "last" | "all"
    layers: tuple[int, ...]
    skip_unchanged: bool = True
    max_tokens: int = 1024
    n_targets: int = 8
    targets: str = "top"  # "top" | "sample"

    @property
    def delta(self) -> float:
        """The signed push ``sign * magnitude`` added to a router logit."""
        return self.push.sign * self.push.magnitude

    def at(self, layer: int, experts: Tensor) -> Perturb:
        """The push of ``layer`` with one target expert per batch row (``experts [batch]``)."""
        return dataclasses.replace(self.push, layers=layer, experts=experts)


def parse_push(perturbation: Any) -> Perturb:
    """The sweep's push from ``None`` (magnitude 1, sign -1), a ``Perturb`` template (positions
    None), ``{"magnitude": m, "sign": s}`` or ``(m, s)``: a ``Perturb("all", "all", ...)``.

    >>> parse_push({"magnitude": 0.5})
    Perturb(layers='all', experts='all', magnitude=0.5, sign=-1, positions=None)
    """
    if perturbation is None:
        magnitude, sign = 1.0, -1
    elif isinstance(perturbation, Perturb):
        if perturbation.positions is not None or perturbation.layers != "all" or perturbation.experts != "all":
            raise InvalidInputError(
                f"perturbation={perturbation!r}: the sweep pushes every (layer, expert) in turn, so a template's layers "
                "and experts would be ignored, and the pushed positions go in perturb_positions=. Pass "
                "Perturb('all', 'all', magnitude=..., sign=...) (or {'magnitude': m, 'sign': s}) and "
                f"perturb_positions={perturbation.positions!r}."
            )
        magnitude, sign = perturbation.magnitude, perturbation.sign
    elif isinstance(perturbation, Mapping):
        unknown = set(perturbation) - {"magnitude", "sign"}
        if unknown:
            raise InvalidInputError(f"perturbation has unknown keys {sorted(unknown)}; valid keys: 'magnitude', 'sign'.")
        magnitude, sign = perturbation.get("magnitude", 1.0), perturbation.get("sign", -1)
    elif isinstance(perturbation, (tuple, list)) and len(perturbation) == 2:
        magnitude, sign = perturbation
    else:
        raise InvalidInputError(
            f"perturbation={perturbation!r}: pass None (magnitude 1, sign -1), a Perturb, "
            "{'magnitude': m, 'sign': s} or (magnitude, sign)."
        )
    Perturb(0, 0, magnitude=magnitude, sign=sign)  # validates both (finite magnitude, sign in {-1, 1})
    return Perturb("all", "all", magnitude=float(magnitude), sign=int(sign))


def choice(name: str, value: Any, valid: Sequence[str]) -> str:
    """``value`` if it is one of ``valid``, else an error listing them."""
    if value not in valid:
        raise InvalidInputError(f"{name}={value!r} is not valid; choose one of {', '.join(repr(v) for v in valid)}.")
    return value


def parse_layers(model: "HookedMoE", layers: Any) -> tuple[int, ...]:
    """MoE layer indices, sorted: None/'all', one index, or a list of them (:func:`moelens._selectors.resolve_layers`)."""
    return tuple(sorted(resolve_layers(model, layers)))


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{name}={value!r} must be a positive int.")
    return value


class SweepInputs:
    """Texts or token ids, validated by :func:`moelens.inputs.prepare_inputs`, served batch by batch,
    with a fingerprint for checkpoints."""

    def __init__(self, model: "HookedMoE", texts: Any, attention_mask: Tensor | None, max_length: int | None = None):
        self.model = model
        self.max_length = max_length  # texts only: their first max_length tokens
        if isinstance(texts, str):
            texts = [texts]
        if isinstance(texts, (list, tuple)) and texts and all(isinstance(t, str) for t in texts):
            prepare_inputs(list(texts[:1]), attention_mask, model.tokenizer, model.cfg.d_vocab, "cpu", max_length)  # checks only
            self.texts, self.ids, self.mask = list(texts), None, None
            self.digest = hashlib.sha256("\x00".join(self.texts).encode("utf-8")).hexdigest()
            self.n = len(self.texts)
            return
        if not isinstance(texts, Tensor):
            raise InvalidInputError(
                "texts must be a non-empty list of str, or a LongTensor [batch pos] of token ids "
                f"(with attention_mask= for padding); got {type(texts).__name__}."
            )
        checked = prepare_inputs(texts, attention_mask, model.tokenizer, model.cfg.d_vocab, "cpu")
        self.max_length = None  # token ids are used as given
        self.texts, self.ids, self.mask = None, checked.input_ids.long(), checked.attention_mask.long()
        digest = hashlib.sha256(self.ids.numpy().tobytes() + self.mask.numpy().tobytes()).hexdigest()
        self.digest = digest + f":{tuple(self.ids.shape)}"
        self.n = self.ids.shape[0]

    def batch(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        """Token ids and mask ``[batch pos]`` of inputs ``start..stop-1`` on the model's device."""
        if self.texts is not None:
            ids, mask = self.model.to_tokens(self.texts[start:stop], truncate=False, max_length=self.max_length, return_mask=True)
        else:
            ids, mask = self.ids[start:stop], self.mask[start:stop]
        device = self.model.device
        return ids.to(device), mask.to(device)
