"""NaN and inf are never silent: the rule shared by :class:`~moelens.HookedMoE` and ``NNsightMoE``.

With ``model.check_finite`` True (the default), a hook (or an intervention) that *returns* a tensor
holding NaN or +-inf raises :class:`~moelens.errors.NonFiniteError` naming the hook point and the
function, at the first point where it happens. The one exception is ``-inf`` on
``hook_router_logits``: it means "never route here" (``Ablate(mode="route")`` writes it). In-place
edits are not inspected at the hook point (that would cost a check of every activation); they are
caught at the output: when any hook was attached to the call and the output holds NaN or inf, the
call raises too. A call without hooks is never checked, so the unhooked model costs nothing more.

Set ``model.check_finite = False`` to get non-finite values anyway (e.g. to study them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from .errors import NonFiniteError

__all__ = ["check_edit", "check_metric", "check_output", "edit_points"]

_OPT_OUT = "set model.check_finite = False to get them anyway"


def _describe(tensor: Tensor, allow_neg_inf: bool) -> str | None:
    """None when ``tensor`` is acceptable; else how many NaN / inf values it holds."""
    if bool(torch.isfinite(tensor).all()):  # the fast path: one reduction, one sync
        return None
    nan = int(tensor.isnan().sum())
    pos, neg = int((tensor == float("inf")).sum()), int((tensor == float("-inf")).sum())
    if allow_neg_inf and not nan and not pos:
        return None
    parts = [f"{n} {what}" for n, what in ((nan, "NaN"), (pos, "+inf"), (0 if allow_neg_inf else neg, "-inf")) if n]
    return " and ".join(parts)


def check_edit(name: str, fn_name: str, tensor: Tensor) -> None:
    """Refuse a hook's returned activation that holds NaN or inf (-inf allowed on router logits).

    >>> check_edit("blocks.0.moe.hook_router_logits", "ablate", torch.tensor([0.0, float("-inf")]))
    >>> check_edit("blocks.0.moe.hook_out", "my_hook", torch.tensor([0.0, float("nan")]))
    Traceback (most recent call last):
    ...
    moelens.errors.NonFiniteError: hook my_hook on 'blocks.0.moe.hook_out' returned 1 NaN of 2 values; ...
    """
    if not tensor.is_floating_point():
        return
    found = _describe(tensor, allow_neg_inf=name.endswith("hook_router_logits"))
    if found is not None:
        raise NonFiniteError(
            f"hook {fn_name} on {name!r} returned {found} of {tensor.numel()} values; every later activation and the "
            f"logits would be NaN. Return finite values (clamp, or use -inf on hook_router_logits to block an expert), "
            f"or {_OPT_OUT}."
        )


def check_output(output: Tensor, active: Iterable[str], what: str = "logits") -> None:
    """Refuse non-finite model output of a call that had hooks attached (``active``: their points).

    >>> check_output(torch.tensor([1.0, float("inf")]), ["blocks.0.hook_resid_pre"])
    Traceback (most recent call last):
    ...
    moelens.errors.NonFiniteError: the logits hold 1 +inf of 2 values after a call with hooks on ['blocks.0.hook_resid_pre']; ...
    """
    points = list(active)
    if not points or not output.is_floating_point():
        return
    found = _describe(output, allow_neg_inf=False)
    if found is not None:
        shown = points[:4] + (["..."] if len(points) > 4 else [])
        raise NonFiniteError(
            f"the {what} hold {found} of {output.numel()} values after a call with hooks on {shown}; no hook returned a "
            f"non-finite value, so one edited an activation in place (or the dtype overflowed). Check those hooks, or {_OPT_OUT}."
        )


def check_metric(value: Tensor, metric: Callable | None) -> None:
    """Refuse a metric whose value is NaN or inf: its gradients would all be NaN.

    >>> check_metric(torch.tensor(float("nan")), None)
    Traceback (most recent call last):
    ...
    moelens.errors.NonFiniteError: the metric returned nan; its gradients (incl_bwd=True) would be NaN. ...
    """
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        name = getattr(metric, "__qualname__", "sum") if metric is not None else "sum"
        raise NonFiniteError(
            f"the metric returned {value.item()}; its gradients (incl_bwd=True) would be NaN. Return a finite "
            f"scalar from metric {name} (e.g. log-probabilities via log_softmax, not log(softmax)), or {_OPT_OUT}."
        )


def edit_points(registry) -> list[str]:
    """Names of the hook points of ``registry`` with a function that may edit (recorders marked
    ``reads_only`` do not count: a cached call of the plain model is not checked)."""
    return [hp.name for hp in registry.points.values() if any(not getattr(fn, "reads_only", False) for fn in hp.fns)]
