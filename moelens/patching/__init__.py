"""Activation and routing patching, as ``transformer_lens.patching`` offers them.

Convention (TransformerLens's): run the *corrupted* input and patch in one activation from the *clean*
run; the result is the metric after each patch. ``metric`` maps logits ``[batch pos d_vocab]`` to a
scalar (or to ``[batch]``, averaged).

- :func:`activation_patching` (and TransformerLens's names :func:`get_act_patch_resid_pre`,
  :func:`get_act_patch_attn_out`, :func:`get_act_patch_mlp_out`): one forward per (layer, position),
  the clean activation written at that position only; a ``[layer pos]`` result.
- :func:`routing_patching`: one expert's routing of one MoE layer taken from the clean run, at every
  position; a ``[layer expert]`` result. It is :func:`moelens.routing_mediation` with the roles
  swapped (its ``indirect`` effect plus the corrupted metric), so the definition of "patching an
  expert's routing" (its dense gate weight, the other experts keeping theirs) is that one.

>>> import torch
>>> from moelens import HookedMoE
>>> from moelens.testing import tiny_model
>>> model = HookedMoE.from_hf(tiny_model("mixtral"))
>>> clean, corrupted = torch.tensor([[5, 6, 7]]), torch.tensor([[5, 9, 7]])
>>> _, clean_cache = model.run_with_cache(clean)
>>> metric = lambda logits: logits[:, -1, 3].mean()
>>> get_act_patch_resid_pre(model, corrupted, clean_cache, metric).shape  # [layer pos]
torch.Size([2, 3])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from moelens.errors import InvalidInputError
from moelens.names import HOOK_TABLE
from moelens.utils import get_act_name

from .result import PatchingResult

__all__ = [
    "PatchingResult",
    "activation_patching",
    "get_act_patch_attn_out",
    "get_act_patch_mlp_out",
    "get_act_patch_resid_pre",
    "routing_patching",
]

Metric = Callable[[Tensor], Tensor]


def _scalar(value: Any, name: str) -> float:
    if isinstance(value, Tensor) and value.numel() >= 1 and value.ndim <= 1:
        return float(value.double().mean())
    if isinstance(value, float | int) and not isinstance(value, bool):
        return float(value)
    shown = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
    raise InvalidInputError(f"metric {name} must return a scalar or [batch] tensor; it returned {shown}.")


def _check_metric(metric: Any) -> None:
    if not callable(metric):
        raise InvalidInputError(f"metric={metric!r} is not callable; pass a function of the logits, e.g. "
                                "lambda logits: logits[:, -1, answer].mean().")


def _metric_name(metric: Metric) -> str:
    return getattr(metric, "__name__", type(metric).__name__)


def _position_patch(clean: Tensor, position: int) -> Callable:
    def patch(activation: Tensor, hook: Any) -> Tensor:
        patched = activation.clone()
        patched[:, position] = clean[:, position].to(patched.device, patched.dtype)
        return patched

    return patch


def activation_patching(
    model: Any,
    corrupted: str | list[str] | Tensor,
    clean_cache: Any,
    metric: Metric,
    activation: str = "resid_pre",
    *,
    layers: Sequence[int] | None = None,
    attention_mask: Tensor | None = None,
) -> PatchingResult:
    """``[layer pos]``: ``metric`` of the corrupted run with ``activation`` (a per-layer short name:
    ``resid_pre``, ``resid_mid``, ``resid_post``, ``attn_out`` or ``mlp_out``) of one layer at one
    position replaced by the clean run's (``clean_cache`` from ``model.run_with_cache(clean)``; same
    batch and length as ``corrupted``). Runs under ``no_grad``, one forward per cell.

    >>> import torch
    >>> from moelens import HookedMoE
    >>> from moelens.testing import tiny_model
    >>> model = HookedMoE.from_hf(tiny_model("qwen2_moe"))
    >>> _, cache = model.run_with_cache(torch.tensor([[4, 5, 6]]))
    >>> result = activation_patching(model, torch.tensor([[4, 8, 6]]), cache, lambda l: l[:, -1, 2].mean(), "mlp_out")
    >>> result.values.shape, result.column
    (torch.Size([2, 3]), 'pos')
    """
    if not isinstance(clean_cache, Mapping):
        raise InvalidInputError(f"clean_cache={str(clean_cache)[:40]!r} is a {type(clean_cache).__name__}; pass the cache of the "
                                "clean run: `_, clean_cache = model.run_with_cache(clean)`.")
    _check_metric(metric)
    suffix = get_act_name(activation, 0).rsplit(".", 1)[-1]
    if HOOK_TABLE[suffix].scope != "layer" or HOOK_TABLE[suffix].shape != "batch pos d_model":
        raise InvalidInputError(
            f"activation_patching(activation={activation!r}): patch a per-layer residual-stream activation: "
            "resid_pre, resid_mid, resid_post, attn_out or mlp_out (routing: routing_patching)."
        )
    chosen = list(range(model.cfg.n_layers)) if layers is None else [int(x) for x in layers]
    inputs = model.to_inputs(corrupted, attention_mask)
    ids, mask = inputs.input_ids, inputs.attention_mask
    name = _metric_name(metric)
    values = torch.empty(len(chosen), ids.shape[1], dtype=torch.float64)
    with torch.no_grad():
        settings = {"patched": activation, "metric": name, "corrupted_metric": _scalar(metric(model(ids, attention_mask=mask)), name)}
        if "ln_final.hook_normalized" in clean_cache:
            settings["clean_metric"] = _scalar(metric(_logits_from_cache(model, clean_cache)), name)
        for row, layer in enumerate(chosen):
            hook_name = get_act_name(activation, layer)
            clean = clean_cache[hook_name]
            if tuple(clean.shape[:2]) != tuple(ids.shape):
                raise InvalidInputError(
                    f"clean_cache[{hook_name!r}] is [batch pos] = {tuple(clean.shape[:2])} but the corrupted input is "
                    f"{tuple(ids.shape)}; patch between inputs of one batch size and length."
                )
            for position in range(ids.shape[1]):
                logits = model.run_with_hooks(ids, [(hook_name, _position_patch(clean, position))], attention_mask=mask)
                values[row, position] = _scalar(metric(logits), name)
    return PatchingResult(values, tuple(chosen), "pos", settings)


def _logits_from_cache(model: Any, cache: Any) -> Tensor:
    """The clean logits from the cached final norm output: the LM head and the family's post-processing."""
    head = model.hf_model.get_output_embeddings()
    return model.spec.logits_from_head(head(cache["ln_final.hook_normalized"]), model.hf_model.config)


def get_act_patch_resid_pre(model: Any, corrupted_tokens: Tensor, clean_cache: Any, patching_metric: Metric) -> Tensor:
    """TransformerLens's name: :func:`activation_patching` of ``resid_pre``, the ``[layer pos]`` tensor."""
    return activation_patching(model, corrupted_tokens, clean_cache, patching_metric, "resid_pre").values


def get_act_patch_attn_out(model: Any, corrupted_tokens: Tensor, clean_cache: Any, patching_metric: Metric) -> Tensor:
    """TransformerLens's name: :func:`activation_patching` of ``attn_out``, the ``[layer pos]`` tensor."""
    return activation_patching(model, corrupted_tokens, clean_cache, patching_metric, "attn_out").values


def get_act_patch_mlp_out(model: Any, corrupted_tokens: Tensor, clean_cache: Any, patching_metric: Metric) -> Tensor:
    """TransformerLens's name: :func:`activation_patching` of ``mlp_out`` (the whole MoE or MLP block's
    output), the ``[layer pos]`` tensor."""
    return activation_patching(model, corrupted_tokens, clean_cache, patching_metric, "mlp_out").values


def routing_patching(
    model: Any,
    clean: str | Sequence[str] | Tensor,
    corrupted: str | Sequence[str] | Tensor,
    metric: Metric,
    *,
    layers: int | Sequence[int] | None = None,
    experts: int | Sequence[int] | None = None,
) -> PatchingResult:
    """``[moe_layer expert]``: ``metric`` of the corrupted run with one expert's routing of one MoE
    layer taken from the clean run (its gate weight at every position; the layers after it route by
    their own rule). ``metric`` maps logits to ``[batch]`` here (each row is a clean/corrupted pair,
    as in :func:`moelens.routing_mediation`, which computes it); the result is its mean over pairs.
    Experts not computed (``experts=``) are NaN.

    >>> import torch
    >>> from moelens import HookedMoE
    >>> from moelens.testing import tiny_model
    >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
    >>> result = routing_patching(model, torch.tensor([[5, 6, 7]]), torch.tensor([[5, 9, 7]]), lambda l: l[:, -1, 3])
    >>> result.values.shape, result.column
    (torch.Size([2, 4]), 'expert')
    """
    from moelens.analysis.mediation import routing_mediation

    _check_metric(metric)
    name = _metric_name(metric)
    # TransformerLens patches clean into corrupted; routing_mediation patches its second argument's
    # routing into its first: swap them.
    med = routing_mediation(model, corrupted, clean, metric, layers=layers, experts=experts, positions=False, progress=False)
    with torch.no_grad():
        base = float(_per_row_mean(model, corrupted, metric, name))
        clean_value = float(_per_row_mean(model, clean, metric, name))
    settings = {"patched": "routing", "metric": name, "corrupted_metric": base, "clean_metric": clean_value}
    return PatchingResult(med.indirect + base, med.moe_layers, "expert", settings)


def _per_row_mean(model: Any, inputs: Any, metric: Metric, name: str) -> float:
    from moelens.analysis.mediation.inputs import token_pairs

    rows = [a for a, _ in token_pairs(model, inputs, inputs)]
    return sum(_scalar(metric(model(row[None].to(model.device))), name) for row in rows) / len(rows)
