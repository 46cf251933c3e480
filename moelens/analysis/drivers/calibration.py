"""A gradient estimate's measured calibration against the exact sweep, on a sample of its inputs.

The first-order estimate linearises the network downstream of the pushed layer, so its sum can sit
well below the exact KL (0.70x on olmoe-deep) while ranking the experts well. Every gradient-method
result therefore carries, in ``settings["calibration"]``, the exact sweep of ``calibrate`` evenly
spaced inputs compared with the estimate on the same inputs: ``ratio`` (sum of the estimate over sum
of the exact effects), ``spearman`` (rank agreement over all (layer, expert) pairs) and
``top10_overlap``. :class:`~moelens.analysis.drivers.DriverEffects` prints it with the result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import Tensor

from .result import DriverEffects, calibration_note  # the latter kept importable here; it lives with the result that prints it

if TYPE_CHECKING:
    from moelens.model import HookedMoE

    from .options import SweepInputs

__all__ = ["CALIBRATION_KEYS", "calibrate", "calibration_note"]

CALIBRATION_KEYS = ("n_inputs", "ratio", "spearman", "top10_overlap")


def calibrate(model: HookedMoE, data: SweepInputs, estimate: Tensor, n: int, kwargs: dict[str, Any],
              sweep: Callable[..., DriverEffects]) -> dict[str, Any]:
    """Exact sweep of ``n`` evenly spaced inputs of ``data`` against ``estimate [input moe_layer
    expert]`` on the same inputs; ``kwargs`` are the sweep's own (push, positions, layers...);
    ``sweep`` is :func:`~moelens.analysis.drivers.driver_effects` (passed in by its caller, which
    this module does not import)."""
    from moelens.analysis.agreement import compare_effects

    k = min(n, data.n)
    rows = [(i * data.n) // k for i in range(k)]
    if data.texts is not None:
        subset: Any = [data.texts[i] for i in rows]
        mask = None
    else:
        subset, mask = data.ids[rows], data.mask[rows]
    pushed = kwargs.get("perturb_positions")
    if isinstance(pushed, tuple) and pushed and all(isinstance(r, tuple) for r in pushed):
        kwargs = {**kwargs, "perturb_positions": [pushed[i] for i in rows]}
    exact = sweep(model, subset, attention_mask=mask, method="exact", progress=False, calibrate=0, **kwargs)
    approx = DriverEffects(estimate[rows].mean(0), exact.moe_layers, exact.n_experts, "estimate")
    agreement = compare_effects(approx, exact, n=min(10, exact.effect.numel()))
    return {"n_inputs": k, "ratio": agreement.ratio, "spearman": agreement.spearman, "top10_overlap": agreement.top_overlap}

