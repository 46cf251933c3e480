"""The driver-effect sweep: arguments, inputs, batches, checkpoints and progress around the
per-batch kernels (:mod:`.exact`, :mod:`.first_order`)."""

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from moelens.errors import InvalidInputError
from moelens.inputs import check_max_length
from moelens.interventions import Perturb
from moelens.runner import SweepRunner

from .exact import exact_batch
from .first_order import first_order_batch
from .options import (
    METHODS,
    POSITIONS,
    TARGETS,
    SweepInputs,
    SweepOptions,
    choice,
    parse_layers,
    parse_push,
    positive_int,
)
from .positions import describe_push, parse_perturb_positions, push_mask
from .result import DriverEffects

if TYPE_CHECKING:
    from moelens.model import HookedMoE

__all__ = ["driver_effects"]

_CKPT_FORMAT = "moelens.driver_effects.checkpoint"
_VERSION = 3  # 3: the model fingerprint digests the weights (no probe)


def driver_effects(
    model: "HookedMoE",
    texts: str | list[str] | Tensor,
    *,
    attention_mask: Tensor | None = None,
    method: str = "exact",
    perturbation: Perturb | Mapping[str, Any] | tuple[float, int] | None = None,
    positions: str = "last",
    perturb_positions: Any = "all",
    layers: int | Sequence[int] | str | None = None,
    batch_size: int = 8,
    max_length: int | None = 256,
    per_input: bool = False,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    n_targets: int = 8,
    targets: str = "top",
    seed: int = 0,
    skip_unchanged: bool = True,
    max_tokens: int | None = None,
    calibrate: int = 8,
) -> DriverEffects:
    """Driver effect ``E_x KL(P || Q_{l,e})`` of every expert of every (chosen) MoE layer.

    ``texts``: texts (the model needs a tokenizer) or token ids ``[batch pos]`` with an optional
    ``attention_mask``. ``max_length`` (default 256, as in :func:`collect_routing_stats`) truncates
    texts to their first ``max_length`` tokens (None keeps them whole); token ids are used as given. ``perturbation``: the push, ``None`` (magnitude 1, sign -1), a ``Perturb``
    used as a template (its ``layers``/``experts`` are ignored; it must have ``positions=None``:
    the push always applies at every position), ``{"magnitude": m, "sign": s}`` or ``(m, s)``.
    ``positions``: ``"last"`` reads the KL at each input's last non-padding token, ``"all"``
    averages it over its non-padding positions. ``perturb_positions``: where the push applies
    (``"all"``, ``"non_special"``, ``"last"``, an int, a list, a slice, or one list per input;
    :mod:`moelens.analysis.drivers.positions`), distinct from ``positions`` (where the KL is read);
    :func:`~moelens.analysis.drivers.by_position.driver_effects_by_position` breaks the effect down
    by pushed position. ``layers``: MoE layer indices (default all).

    ``method``: ``"exact"``, ``"first_order"`` or ``"router_gradient"`` (module docstring). The
    gradient methods use ``n_targets`` backward passes per batch (times the number of positions for
    ``positions="all"``), on the ``n_targets`` most probable next tokens (``targets="top"``,
    probabilities renormalised; ``n_targets >= d_vocab`` takes the whole distribution) or as many
    samples from ``P`` (``targets="sample"``, drawn with ``seed`` and the batch's position).

    ``skip_unchanged``: pairs whose routing does not move beyond float32 rounding get effect 0
    without a forward (False runs every pair). ``max_tokens``: tokens per stacked forward (default
    1024 on CPU, 16384 on an accelerator; with ``positions="all"`` the exact method holds logits
    of that many tokens).
    ``calibrate``: for the gradient methods, the number of evenly spaced inputs on which the exact
    sweep is also run, to measure the estimate's calibration (sum ratio, Spearman, top-10 overlap
    in ``settings["calibration"]``, printed with the result; 0 skips it;
    :mod:`moelens.analysis.drivers.calibration`).
    ``checkpoint``: a folder; the per-input effects are saved atomically after each batch, and a
    call with the same arguments resumes where the last one stopped, with the same result as an
    uninterrupted run. ``per_input=True`` keeps ``[input moe_layer expert]`` in the result.

    Returns a :class:`DriverEffects`. The exact method runs under ``no_grad``; the gradient methods
    turn autograd on for their clean forward (also inside ``torch.no_grad()``) and differentiate with
    ``torch.autograd.grad`` with respect to internal tensors only: parameters' ``.grad`` stay as
    they are. Per batch, the exact method costs about ``n_experts * (n_layers - l)`` layer
    passes for MoE layer ``l`` (minus skipped pairs); the first-order one a forward, ``n_targets``
    backward passes and per MoE layer a router pass over all experts plus one block pass on the
    tokens whose top-k set the push changes.

    >>> from moelens import HookedMoE
    >>> from moelens.testing import tiny_model
    >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
    >>> ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    >>> exact = driver_effects(model, ids, progress=False, per_input=True)
    >>> exact.per_input.shape  # [input moe_layer expert]
    torch.Size([2, 2, 4])
    >>> approx = driver_effects(model, ids, method="first_order", n_targets=97, progress=False)
    >>> bool((approx.effect >= 0).all())
    True
    """
    push = parse_push(perturbation)
    if max_tokens is None:
        # Stacked forwards beyond ~1k tokens run slower per token on a CPU (caches); GPUs want more.
        max_tokens = 1024 if model.device.type == "cpu" else 16384
    if method != "exact" and not getattr(model, "runs_backward", True):  # NNsightMoE: forward traces only
        raise InvalidInputError(f"method={method!r} needs backward passes, which {type(model).__name__} does not run; use "
                                "method='exact' (batched forwards, the same table), or a HookedMoE.")
    options = SweepOptions(
        method=choice("method", method, METHODS),
        push=push,
        positions=choice("positions", positions, POSITIONS),
        layers=parse_layers(model, layers),
        skip_unchanged=bool(skip_unchanged),
        max_tokens=positive_int("max_tokens", max_tokens),
        n_targets=positive_int("n_targets", n_targets),
        targets=choice("targets", targets, TARGETS),
    )
    batch_size = positive_int("batch_size", batch_size)
    if calibrate != 0:
        positive_int("calibrate", calibrate)
    check_max_length(max_length)
    data = SweepInputs(model, texts, attention_mask, max_length)
    pushed_at = parse_perturb_positions(perturb_positions, data.n)
    gradient = options.method != "exact"
    if gradient and torch.is_inference_mode_enabled():
        raise InvalidInputError(
            f"method={method!r} needs autograd (backward passes), but torch.inference_mode() is on. Call it "
            "outside inference_mode (torch.no_grad() is fine), or use method='exact'."
        )
    settings = {
        "magnitude": push.magnitude, "sign": push.sign, "positions": options.positions,
        "perturb_positions": describe_push(pushed_at), "n_inputs": data.n,
        "batch_size": batch_size, "max_length": data.max_length, "skip_unchanged": options.skip_unchanged, "max_tokens": options.max_tokens,
        "n_targets": options.n_targets if gradient else None, "targets": options.targets if gradient else None,
        "seed": seed if gradient and options.targets == "sample" else None,
    }
    n_experts = model.cfg.n_experts
    results = torch.zeros(data.n, len(options.layers), n_experts, dtype=torch.float64)
    run = SweepRunner(
        "driver_effects", math.ceil(data.n / batch_size), model=model, checkpoint=checkpoint,
        fingerprint={"format": _CKPT_FORMAT, "version": _VERSION, "method": options.method,
                     "layers": list(options.layers), "inputs": data.digest, **settings},
        progress=progress, desc=f"driver effects ({options.method})", unit="layer", units_per_step=len(options.layers),
    )
    saved, calibrated = run.resume(), None
    if saved is not None:
        done = saved.get("per_input")
        if done is None or done.ndim != 3 or done.shape[0] != min(run.done * batch_size, data.n) or done.shape[1:] != results.shape[1:]:
            raise run.refuse("does not hold the per-input effects of this run")
        results[: done.shape[0]] = done
        calibrated = saved.get("calibration")  # [n_inputs ratio spearman top10_overlap], a finished run's
    for step in run:
        start, stop = step * batch_size, min((step + 1) * batch_size, data.n)
        ids, mask = data.batch(start, stop)
        run.note(f"inputs {start}-{stop - 1} of {data.n}")
        where = push_mask(model, pushed_at, ids, mask, start)
        if options.method == "exact":
            results[start:stop] = exact_batch(model, ids, mask, options, run.update, where)
        else:
            sampled = options.targets == "sample"
            generator = torch.Generator().manual_seed(seed * 1_000_003 + start) if sampled else None
            results[start:stop] = first_order_batch(model, ids, mask, options, generator, run.update, where)
        run.save({"per_input": results[:stop]}, step)
    per = results if per_input else None
    if gradient and calibrate:
        from .calibration import CALIBRATION_KEYS
        from .calibration import calibrate as measure

        if calibrated is not None and int(calibrated[0]) == min(calibrate, data.n):
            settings = {**settings, "calibration": {k: float(v) for k, v in zip(CALIBRATION_KEYS, calibrated.tolist(), strict=True)}}
            settings["calibration"]["n_inputs"] = int(calibrated[0])
            return DriverEffects(results.mean(0), options.layers, n_experts, options.method, settings, per)
        same = {"perturbation": push, "positions": options.positions, "perturb_positions": pushed_at, "layers": list(options.layers),
                "batch_size": batch_size, "max_length": max_length, "skip_unchanged": options.skip_unchanged,
                "max_tokens": options.max_tokens}
        settings = {**settings, "calibration": measure(model, data, results, calibrate, same, driver_effects)}
        if run.state is not None:  # a finished checkpoint answers with its calibration, without recomputing it
            values = torch.tensor([float(settings["calibration"][k]) for k in CALIBRATION_KEYS], dtype=torch.float64)
            run.save({"per_input": results, "calibration": values}, run.n_steps - 1)
    return DriverEffects(results.mean(0), options.layers, n_experts, options.method, settings, per)
