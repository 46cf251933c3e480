"""Where the driver sweep pushes: ``driver_effects(..., perturb_positions=...)``.

``positions=`` says where the KL is read; ``perturb_positions=`` says at which tokens the expert's
router logit is pushed. A selector is resolved, batch by batch, to a bool mask ``[batch pos]`` over
the real tokens:

- ``"all"`` (default): every real token, today's behaviour (no mask: the plain ``Perturb`` runs);
- ``"non_special"``: every real token except the tokenizer's special tokens (BOS, EOS, pad; the model
  needs a tokenizer);
- ``"last"``: each row's last real token (``-1``);
- an int, a list of ints or a slice: as ``Perturb(positions=...)`` (negative values count from
  each row's last real token; a position outside a row is an error, as there);
- per-row lists (a list of lists, one per input): row ``i`` is pushed at ``perturb_positions[i]``
  (absolute positions; an empty list pushes nothing and gives effect 0 for that input).

The masked push is :class:`PushAt`, a ``Perturb`` whose positions are that mask: both backends run
it like any intervention, and the gradient kernels restrict the block change to the masked tokens.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from moelens._selectors import check_positions, position_mask
from moelens.errors import InterventionError, InvalidInputError
from moelens.hook_points import HookPoint
from moelens.interventions import Perturb

if TYPE_CHECKING:
    from moelens.model import HookedMoE

__all__ = ["PushAt", "describe_push", "parse_perturb_positions", "push_mask"]

KEYWORDS = ("all", "non_special", "last")


def parse_perturb_positions(value: Any, n_inputs: int) -> Any:
    """The selector, checked once and frozen (lists become tuples): a keyword, an int, a slice, a
    tuple of ints, or a tuple of per-row tuples (one per input).

    >>> parse_perturb_positions([[0, 1], []], 2)
    ((0, 1), ())
    >>> parse_perturb_positions("first", 2)
    Traceback (most recent call last):
    ...
    moelens.errors.InvalidInputError: perturb_positions='first' is not valid; pass 'all', 'non_special', 'last', an int, a list of ints, a slice, or one list of positions per input.
    """
    hint = "pass 'all', 'non_special', 'last', an int, a list of ints, a slice, or one list of positions per input."
    if isinstance(value, str):
        if value in KEYWORDS:
            return value
        raise InvalidInputError(f"perturb_positions={value!r} is not valid; {hint}")
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (list, tuple)) for v in value):
        if len(value) != n_inputs:
            raise InvalidInputError(
                f"perturb_positions has {len(value)} per-row lists but there are {n_inputs} inputs; pass one list per input."
            )
        rows = tuple(tuple(row) for row in value)
        for row in rows:
            if not all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in row):
                raise InvalidInputError(f"perturb_positions row {list(row)!r}: per-row positions must be ints >= 0.")
        return rows
    frozen = tuple(value) if isinstance(value, list) else value
    try:
        check_positions(frozen)
    except InterventionError:
        raise InvalidInputError(f"perturb_positions={value!r} is not valid; {hint}") from None
    if frozen is None or frozen == ():
        raise InvalidInputError(f"perturb_positions={value!r} is not valid; {hint}")
    return frozen


def describe_push(selector: Any) -> Any:
    """A JSON-ready record of the selector (for settings and checkpoint fingerprints).

    >>> describe_push(slice(0, 3)), describe_push(((0,), (1, 2)))
    ('slice(0, 3, None)', [[0], [1, 2]])
    """
    if isinstance(selector, slice):
        return repr(selector)
    if isinstance(selector, tuple):
        return [list(r) if isinstance(r, tuple) else r for r in selector]
    return selector


def _special_ids(model: "HookedMoE") -> list[int]:
    tokenizer = model.tokenizer
    if tokenizer is None or not getattr(tokenizer, "all_special_ids", None):
        raise InvalidInputError(
            "perturb_positions='non_special' needs the model's tokenizer (its special token ids), and this model has "
            "none; pass the positions instead, e.g. perturb_positions=slice(1, None) to skip a BOS at position 0."
        )
    return list(tokenizer.all_special_ids)


def push_mask(model: "HookedMoE", selector: Any, ids: Tensor, mask: Tensor, start: int) -> Tensor | None:
    """Bool ``[batch pos]`` of the pushed real tokens of inputs ``start..start+batch-1`` (None:
    every real token, the plain push).

    >>> from moelens import HookedMoE
    >>> from moelens.testing import tiny_model
    >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
    >>> ids, mask = torch.tensor([[5, 6, 7], [8, 9, 0]]), torch.tensor([[1, 1, 1], [1, 1, 0]])
    >>> push_mask(model, "last", ids, mask, 0).long().tolist()
    [[0, 0, 1], [0, 1, 0]]
    """
    real = mask.bool()
    if selector == "all":
        return None
    if selector == "non_special":
        special = torch.tensor(_special_ids(model), dtype=ids.dtype, device=ids.device)
        return real & ~torch.isin(ids, special)
    if isinstance(selector, tuple) and selector and all(isinstance(r, tuple) for r in selector):
        out = torch.zeros_like(real)
        for i in range(ids.shape[0]):
            row = [p for p in selector[start + i] if p < ids.shape[1]]
            out[i, row] = True
        return out & real
    chosen = -1 if selector == "last" else selector
    try:
        return position_mask(chosen, mask.cpu(), "perturb_positions").to(mask.device) & real
    except InterventionError as err:
        raise InvalidInputError(str(err)) from None


@dataclass(frozen=True, eq=False, repr=True)
class PushAt(Perturb):
    """``Perturb`` at the tokens of an explicit bool mask ``where [batch pos]`` (one row per batch
    row; columns beyond the call's width are dropped). The sweep's per-row push.

    >>> from moelens import HookedMoE
    >>> from moelens.testing import tiny_model
    >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
    >>> ids = torch.tensor([[5, 6, 7]])
    >>> push = PushAt(0, 1, magnitude=3.0, where=torch.tensor([[False, False, True]]))
    >>> torch.equal(model.run_with_interventions(ids, [push]), model.run_with_interventions(ids, [Perturb(0, 1, 3.0, positions=-1)]))
    True
    """

    where: Tensor | None = None

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.where, Tensor) or self.where.dtype != torch.bool or self.where.ndim != 2:
            raise InterventionError("PushAt needs where=, a bool tensor [batch pos].")

    def _targets(self, model: "HookedMoE", hook: HookPoint, like: Tensor) -> Tensor:
        batch, width = like.shape[:2]
        if self.where.shape[0] != batch or self.where.shape[1] < width:
            raise InterventionError(f"PushAt: where has shape {tuple(self.where.shape)}; the call has [batch pos] = [{batch}, {width}].")
        full = super()._targets(model, hook, like)  # [batch pos n_experts], every position
        return full & self.where[:, :width, None].to(like.device)


def at(push: Perturb, layer: int, experts: Tensor, where: Tensor | None) -> Perturb:
    """The push of ``layer`` on one target expert per row, at ``where`` (None: every position)."""
    if where is None:
        return Perturb(layer, experts, magnitude=push.magnitude, sign=push.sign)
    return PushAt(layer, experts, magnitude=push.magnitude, sign=push.sign, where=where)


def rows_of(where: Tensor | None, rows: Tensor, width: int | None = None) -> Tensor | None:
    """``where`` restricted to batch rows ``rows`` (and the first ``width`` columns)."""
    if where is None:
        return None
    picked = where[rows]
    return picked if width is None else picked[:, :width]

