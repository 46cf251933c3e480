"""Driver experts: how much the next-token distribution moves when one expert's routing is pushed.

For MoE layer ``l`` and expert ``e`` (a reconstruction of arXiv 2601.10159, DESIGN.md section 4)::

    CE(l, e) = E_x KL( P(. | x) || Q_{l,e}(. | x) )

``P`` is the model's next-token distribution, ``Q_{l,e}`` the same under
``Perturb(l, e, magnitude, sign)``: ``sign * magnitude`` added to the expert's router logit **at
every position** of the input, then re-routed by the family's own rule. The KL is read at the last
non-padding token (``positions="last"``, the answer position) or averaged over the non-padding
positions of each input (``positions="all"``); inputs are then averaged with equal weight.

Three methods, one result type (:class:`DriverEffects`):

- ``"exact"``: the KL itself, without the naive ``layers x experts`` full forwards. One clean
  forward per batch keeps the residual stream entering every MoE layer; a push at layer ``l`` then
  runs layers ``l..end`` only (``start_at_layer``), many (input, expert) pairs stacked along the
  batch axis in one forward (``Perturb``'s ``[batch]`` expert selector), short inputs together and
  trailing padding dropped. The clean top-k is reused: the perturbed routing of layer ``l`` comes
  from the clean router logits and the family's rule for all experts at once, and a pair whose
  routing does not move at any real token (up to float32 rounding) has effect 0 and never runs.
  With ``positions="last"`` only the last token goes through the final norm and unembedding
  (checked against the clean logits on every batch, else full logits are used). Equal to the naive
  loop up to float rounding.
- ``"first_order"``: exact change of the MoE block output (top-k swaps included), propagated
  linearly to the logits: one clean forward and ``n_targets`` backward passes per batch, then
  per layer only routing arithmetic and block runs on the tokens whose top-k set changes (see
  :mod:`moelens.analysis.driver_kernels`).
- ``"router_gradient"``: the cruder gradient with respect to the router logits only; cheapest,
  blind to experts entering or leaving the top-k.

"Driver experts concentrate in the middle layers": :meth:`DriverEffects.layer_totals`,
:meth:`DriverEffects.middle_share` and :meth:`DriverEffects.plot_layer_totals`.
:func:`moelens.analysis.agreement.compare_effects` checks an estimate against the exact sweep.

>>> from moelens import HookedMoE
>>> from moelens.testing import tiny_model
>>> model = HookedMoE.from_hf(tiny_model("mixtral"))
>>> ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
>>> effects = driver_effects(model, ids, progress=False)
>>> effects.effect.shape  # [moe_layer expert]
torch.Size([2, 4])
>>> list(effects.top(3).columns)
['layer', 'expert', 'effect', 'rank']
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from matplotlib.figure import Figure
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from moelens.errors import InvalidInputError
from moelens.interventions import Perturb

from .driver_kernels import PerturbSpec, exact_batch, first_order_batch
from moelens.analysis._io import sidecar_paths, save_figure

if TYPE_CHECKING:
    from moelens.model import HookedMoE

__all__ = ["DriverEffects", "driver_effects"]

METHODS = ("exact", "first_order", "router_gradient")
POSITIONS = ("last", "all")
TARGETS = ("top", "sample")
_FORMAT = "moelens.DriverEffects"
_CKPT_FORMAT = "moelens.driver_effects.checkpoint"
_VERSION = 1


# -- the result -------------------------------------------------------------------------------------






@dataclass
class DriverEffects:
    """Driver effect of every (MoE layer, expert): mean KL over inputs, in nats.

    ``effect [moe_layer expert]`` (float64, CPU); ``per_input [input moe_layer expert]`` when the
    sweep was asked for it; ``moe_layers`` are model layer indices (the ``L`` of ``blocks.{L}.moe``)
    in the order of the rows; ``settings`` records how the numbers were made (perturbation,
    positions, method options, number of inputs).

    >>> effects = DriverEffects(torch.tensor([[0.1, 0.5], [0.3, 0.0]]), (0, 1), 2, "exact")
    >>> effects.top(2)[["layer", "expert"]].values.tolist()
    [[0, 1], [1, 0]]
    """

    effect: Float[Tensor, "moe_layer expert"]
    moe_layers: tuple[int, ...]
    n_experts: int
    method: str
    settings: dict[str, Any] = field(default_factory=dict)
    per_input: Float[Tensor, "input moe_layer expert"] | None = None

    def __post_init__(self) -> None:
        self.moe_layers = tuple(int(layer) for layer in self.moe_layers)
        self.effect = self.effect.detach().cpu().double()
        expected = (len(self.moe_layers), int(self.n_experts))
        if tuple(self.effect.shape) != expected:
            raise ValueError(f"effect has shape {tuple(self.effect.shape)}; expected {expected} [moe_layer expert].")
        if self.per_input is not None:
            self.per_input = self.per_input.detach().cpu().double()
            if tuple(self.per_input.shape[1:]) != expected:
                raise ValueError(
                    f"per_input has shape {tuple(self.per_input.shape)}; expected (n_inputs, *{expected})."
                )

    @property
    def n_inputs(self) -> int:
        return int(self.settings.get("n_inputs", 0 if self.per_input is None else self.per_input.shape[0]))

    # -- tables ---------------------------------------------------------------------------------
    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, expert), in that order: ``layer, expert, effect, rank, share``
        (fraction of the summed effect), plus ``std`` and ``sem`` over inputs with ``per_input``."""
        n_l, n_e = self.effect.shape
        effect = self.effect.reshape(-1).numpy()
        order = np.lexsort((np.arange(n_l * n_e), -effect))  # effect descending, then (layer, expert)
        rank = np.empty(n_l * n_e, dtype=np.int64)
        rank[order] = np.arange(1, n_l * n_e + 1)
        total = float(effect.sum())
        frame = pd.DataFrame(
            {
                "layer": np.repeat(np.array(self.moe_layers, dtype=np.int64), n_e),
                "expert": np.tile(np.arange(n_e), n_l),
                "effect": effect,
                "rank": rank,
                "share": effect / total if total > 0 else np.zeros_like(effect),
            }
        )
        if self.per_input is not None and self.per_input.shape[0] > 1:
            std = self.per_input.std(0).reshape(-1).numpy()
            frame["std"] = std
            frame["sem"] = std / math.sqrt(self.per_input.shape[0])
        return frame

    def top(self, n: int = 10) -> pd.DataFrame:
        """The ``n`` strongest drivers: ``layer, expert, effect, rank`` (ties by layer, expert).

        >>> e = DriverEffects(torch.tensor([[0.1, 0.5], [0.3, 0.0]], dtype=torch.float64), (0, 2), 2, "exact")
        >>> e.top(2)[["layer", "expert", "rank"]].values.tolist()
        [[0, 1, 1], [2, 0, 2]]
        """
        frame = self.to_frame().sort_values("rank")
        return frame[["layer", "expert", "effect", "rank"]].head(n).reset_index(drop=True)

    def layer_totals(self) -> pd.DataFrame:
        """Per MoE layer: ``layer, total`` (sum over experts), ``share`` of the grand total,
        ``max`` and ``top_expert`` — the "driver experts sit in the middle layers" profile.

        >>> e = DriverEffects(torch.tensor([[0.1, 0.5], [0.3, 0.1]]), (0, 2), 2, "exact")
        >>> e.layer_totals()["share"].round(2).tolist()
        [0.6, 0.4]
        """
        total = self.effect.sum(1)
        grand = float(total.sum())
        return pd.DataFrame(
            {
                "layer": list(self.moe_layers),
                "total": total.numpy(),
                "share": (total / grand).numpy() if grand > 0 else np.zeros(len(self.moe_layers)),
                "max": self.effect.max(1).values.numpy(),
                "top_expert": self.effect.argmax(1).numpy(),
            }
        )

    def middle_share(self) -> float:
        """Share of the summed effect held by the middle third of the MoE layers (for uniform
        effects, the fraction of layers in that third: about 1/3)."""
        n = len(self.moe_layers)
        lo, hi = n // 3, n - n // 3
        total = float(self.effect.sum())
        return float(self.effect[lo:hi].sum()) / total if total > 0 else float("nan")

    # -- plots ----------------------------------------------------------------------------------
    def plot_heatmap(self, path: str | Path | None = None, log: bool = False) -> Figure:
        """Layer (rows) x expert (columns) heatmap of the effect; ``log=True`` for a log colour
        scale (effects often span orders of magnitude). Returns the Figure; writes it to ``path``."""
        from matplotlib.colors import LogNorm

        values = self.effect.numpy()
        n_l, n_e = values.shape
        size = (min(max(6.0, 0.18 * n_e + 2.0), 22.0), min(max(2.5, 0.25 * n_l + 1.2), 12.0))
        fig = Figure(figsize=size, layout="constrained")
        ax = fig.subplots()
        norm = None
        if log:
            positive = values[values > 0]
            floor = float(positive.min()) if positive.size else 1e-12
            norm = LogNorm(vmin=floor, vmax=max(float(values.max()), floor * 10))
            values = np.where(values > 0, values, np.nan)
        image = ax.imshow(values, aspect="auto", cmap="magma", norm=norm, interpolation="nearest")
        step = max(1, math.ceil(n_l / 24))
        ax.set_yticks(range(0, n_l, step), [str(x) for x in self.moe_layers[::step]])
        ax.set_xlabel("expert")
        ax.set_ylabel("layer")
        ax.set_title(f"driver effect, KL (nats) — {self.method}, {self._push()}")
        fig.colorbar(image, ax=ax, label="KL (nats)")
        return save_figure(fig, path)

    def plot_layer_totals(self, path: str | Path | None = None) -> Figure:
        """Bar chart of the summed effect per MoE layer, the middle third shaded and its share in
        the title. Returns the Figure; writes it to ``path``."""
        totals = self.layer_totals()
        n = len(self.moe_layers)
        fig = Figure(figsize=(max(5.0, 0.3 * n + 2.0), 3.5), layout="constrained")
        ax = fig.subplots()
        ax.axvspan(n // 3 - 0.5, n - n // 3 - 0.5, color="grey", alpha=0.15, lw=0, label="middle third")
        ax.bar(range(n), totals["total"], color="tab:red")
        step = max(1, math.ceil(n / 24))
        ax.set_xticks(range(0, n, step), [str(x) for x in self.moe_layers[::step]])
        ax.set_xlabel("layer")
        ax.set_ylabel("sum of driver effects (nats)")
        ax.set_title(f"driver effect per layer — middle third holds {self.middle_share():.0%}")
        ax.legend(loc="upper right", frameon=False)
        return save_figure(fig, path)

    def _push(self) -> str:
        magnitude, sign = self.settings.get("magnitude"), self.settings.get("sign")
        return f"push {'+' if sign == 1 else '-'}{magnitude}" if magnitude is not None else "push"

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``<path>.safetensors`` (tensors) and ``<path>.json`` (metadata); no pickle.

        >>> import tempfile
        >>> e = DriverEffects(torch.tensor([[0.1, 0.5]], dtype=torch.float64), (1,), 2, "exact", {"positions": "last"})
        >>> with tempfile.TemporaryDirectory() as d:
        ...     DriverEffects.load(e.save(f"{d}/drivers")).effect.tolist()
        [[0.1, 0.5]]
        """
        tensor_path, meta_path = sidecar_paths(path)
        tensors = {"effect": self.effect.contiguous()}
        if self.per_input is not None:
            tensors["per_input"] = self.per_input.contiguous()
        save_file(tensors, str(tensor_path))
        meta = {
            "format": _FORMAT,
            "version": _VERSION,
            "moe_layers": list(self.moe_layers),
            "n_experts": self.n_experts,
            "method": self.method,
            "settings": self.settings,
            "tensors": tensor_path.name,
        }
        meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return tensor_path

    @classmethod
    def load(cls, path: str | Path) -> DriverEffects:
        """Read what :meth:`save` wrote (either file's path, or the common stem)."""
        tensor_path, meta_path = sidecar_paths(path)
        if not tensor_path.is_file() or not meta_path.is_file():
            raise FileNotFoundError(f"DriverEffects needs both {tensor_path} and {meta_path} (written by save()).")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
            raise ValueError(
                f"{meta_path} is not a {_FORMAT} v{_VERSION} file (format={meta.get('format')!r}, "
                f"version={meta.get('version')!r})."
            )
        tensors = load_file(str(tensor_path))
        return cls(
            tensors["effect"], tuple(meta["moe_layers"]), meta["n_experts"], meta["method"],
            meta.get("settings", {}), tensors.get("per_input"),
        )

    def _repr_html_(self) -> str:  # notebooks: summary table and heatmap
        from moelens.viz.notebook import driver_effects_html

        return driver_effects_html(self)

    def __repr__(self) -> str:
        best = self.top(1)
        lead = f", top L{int(best.layer[0])}E{int(best.expert[0])}={best.effect[0]:.3g}" if len(best) else ""
        return (
            f"DriverEffects({self.method}, moe_layers={list(self.moe_layers)}, n_experts={self.n_experts}, "
            f"n_inputs={self.n_inputs}, {self._push()}{lead})"
        )


# -- argument handling ------------------------------------------------------------------------------


def _perturb_spec(perturbation: Any) -> PerturbSpec:
    if perturbation is None:
        return PerturbSpec(1.0, -1)
    if isinstance(perturbation, Perturb):
        if perturbation.positions is not None:
            raise InvalidInputError(
                f"perturbation={perturbation!r}: the sweep pushes every position (positions=None); its "
                "layers and experts are ignored. Pass Perturb('all', 'all', magnitude=..., sign=...)."
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
    return PerturbSpec(float(magnitude), int(sign))


def _choice(name: str, value: Any, valid: Sequence[str]) -> str:
    if value not in valid:
        raise InvalidInputError(f"{name}={value!r} is not valid; choose one of {', '.join(repr(v) for v in valid)}.")
    return value


def _layers(model: HookedMoE, layers: Any) -> list[int]:
    valid = list(model.cfg.moe_layers)
    if layers is None or layers == "all":
        return valid
    chosen = [layers] if isinstance(layers, int) and not isinstance(layers, bool) else layers
    if not isinstance(chosen, (list, tuple)) or not chosen or not all(
        isinstance(x, int) and not isinstance(x, bool) for x in chosen
    ):
        raise InvalidInputError(f"layers={layers!r}: pass None/'all', an MoE layer index, or a list of them; MoE layers are {valid}.")
    bad = [x for x in chosen if x not in valid]
    if bad or len(set(chosen)) != len(chosen):
        raise InvalidInputError(
            f"layers={layers!r}: {bad or 'duplicates'} {'are not MoE layers' if bad else 'given twice'}; "
            f"valid MoE layers are {valid}."
        )
    return sorted(chosen)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{name}={value!r} must be a positive int.")
    return value


class _Inputs:
    """Texts or token ids, served batch by batch, with a fingerprint for checkpoints."""

    def __init__(self, model: HookedMoE, texts: Any, attention_mask: Tensor | None):
        self.model = model
        if isinstance(texts, str):
            texts = [texts]
        if isinstance(texts, (list, tuple)) and texts and all(isinstance(t, str) for t in texts):
            if attention_mask is not None:
                raise InvalidInputError("attention_mask= goes with token ids; for texts moelens builds the mask itself.")
            if model.tokenizer is None:
                raise InvalidInputError("texts were given but this model has no tokenizer; pass token ids [batch pos].")
            self.texts, self.ids, self.mask = list(texts), None, None
            digest = hashlib.sha256("\x00".join(self.texts).encode("utf-8")).hexdigest()
        elif isinstance(texts, Tensor) and texts.ndim in (1, 2) and not texts.dtype.is_floating_point:
            ids = texts if texts.ndim == 2 else texts[None]
            mask = torch.ones_like(ids) if attention_mask is None else attention_mask
            if tuple(mask.shape) != tuple(ids.shape):
                raise InvalidInputError(f"attention_mask has shape {tuple(mask.shape)} but the token ids have shape {tuple(ids.shape)}.")
            self.texts, self.ids, self.mask = None, ids.long().cpu(), mask.long().cpu()
            digest = hashlib.sha256(self.ids.numpy().tobytes() + self.mask.numpy().tobytes()).hexdigest()
            digest += f":{tuple(ids.shape)}"
        else:
            raise InvalidInputError(
                "texts must be a non-empty list of str, or a LongTensor [batch pos] of token ids "
                f"(with attention_mask= for padding); got {type(texts).__name__}."
            )
        self.n = len(self.texts) if self.texts is not None else self.ids.shape[0]
        self.digest = digest

    def batch(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        if self.texts is not None:
            ids, mask = self.model.to_tokens(self.texts[start:stop])
        else:
            ids, mask = self.ids[start:stop], self.mask[start:stop]
        device = self.model.device
        return ids.to(device), mask.to(device)


# -- checkpoints ------------------------------------------------------------------------------------


class _Checkpoint:
    """A folder holding the arguments' fingerprint and the per-input effects done so far.

    ``state.safetensors`` carries both (the fingerprint in its metadata), so one ``os.replace``
    makes each save atomic: a run killed at any moment leaves either the old or the new state.
    """

    def __init__(self, path: str | Path, fingerprint: dict[str, Any]):
        self.dir = Path(path)
        self.fingerprint = fingerprint
        self.state = self.dir / "state.safetensors"
        self.probe: list[list[float]] = []  # see _probe

    def resume(self) -> Tensor | None:
        """The per-input effects already done ``[n_done moe_layer expert]``, or None."""
        if not self.state.is_file():
            return None
        with safe_open(str(self.state), framework="pt") as handle:
            meta = handle.metadata() or {}
        saved = json.loads(meta.get("fingerprint", "{}"))
        if saved != self.fingerprint:
            diff = sorted(k for k in set(saved) | set(self.fingerprint) if saved.get(k) != self.fingerprint.get(k))
            detail = "; ".join(f"{k}: saved {saved.get(k)!r}, now {self.fingerprint.get(k)!r}" for k in diff[:6])
            raise InvalidInputError(
                f"checkpoint {self.dir} was written by a driver_effects call with other arguments ({detail}). "
                "Rerun with the same arguments to resume, or pass another checkpoint= path (or delete this one)."
            )
        return load_file(str(self.state))["per_input"]

    def saved_probe(self) -> list[list[float]]:
        with safe_open(str(self.state), framework="pt") as handle:
            return json.loads((handle.metadata() or {}).get("probe", "[]"))

    def save(self, per_input: Tensor) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = {
            "fingerprint": json.dumps(self.fingerprint, sort_keys=True),
            "n_done": str(per_input.shape[0]),
            "probe": json.dumps(self.probe),
        }
        tmp = self.state.with_name(f".{self.state.name}.{os.getpid()}.tmp")
        save_file({"per_input": per_input.contiguous()}, str(tmp), metadata=meta)
        os.replace(tmp, self.state)
        readable = self.dir / "fingerprint.json"
        if not readable.is_file():
            readable.write_text(json.dumps(self.fingerprint, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _model_fingerprint(model: HookedMoE) -> dict[str, Any]:
    cfg = model.cfg
    return {
        "architecture": cfg.architecture, "n_layers": cfg.n_layers, "moe_layers": list(cfg.moe_layers),
        "n_experts": cfg.n_experts, "top_k": cfg.top_k, "d_model": cfg.d_model, "d_vocab": cfg.d_vocab,
        "name_or_path": str(getattr(model.hf_model.config, "_name_or_path", "")),
        "dtype": str(next(model.hf_model.parameters()).dtype),
    }


def _probe_logp(model: HookedMoE, data: _Inputs) -> Tensor:
    ids, mask = data.batch(0, 1)
    with torch.no_grad():
        return torch.log_softmax(model(ids, attention_mask=mask)[0, int(mask[0].nonzero().max())].float(), -1)


def _probe(model: HookedMoE, data: _Inputs) -> list[list[float]]:
    """Top-8 next-token log-probs of the first input: a cheap check that a resumed run uses the
    same model (compared with a tolerance, so another kernel's rounding does not refuse a resume)."""
    top = _probe_logp(model, data).topk(min(8, model.cfg.d_vocab))
    return [[int(i), round(float(v), 5)] for i, v in zip(top.indices, top.values)]


def _check_probe(model: HookedMoE, data: _Inputs, saved: list[list[float]], where: Path) -> None:
    logp = _probe_logp(model, data)
    for token, value in saved:
        if abs(float(logp[token]) - value) > 1e-3 * max(1.0, abs(value)):
            raise InvalidInputError(
                f"checkpoint {where} was written with another model: log P(token {token}) of the first input was "
                f"{value:.5f} then and is {float(logp[token]):.5f} now. Use another checkpoint= path for this model."
            )


# -- the sweep --------------------------------------------------------------------------------------


def driver_effects(
    model: HookedMoE,
    texts: str | list[str] | Tensor,
    *,
    attention_mask: Tensor | None = None,
    method: str = "exact",
    perturbation: Perturb | Mapping[str, Any] | tuple[float, int] | None = None,
    positions: str = "last",
    layers: int | Sequence[int] | str | None = None,
    batch_size: int = 8,
    per_input: bool = False,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    n_targets: int = 8,
    targets: str = "top",
    seed: int = 0,
    skip_unchanged: bool = True,
    max_tokens: int | None = None,
) -> DriverEffects:
    """Driver effect ``E_x KL(P || Q_{l,e})`` of every expert of every (chosen) MoE layer.

    ``texts``: texts (the model needs a tokenizer) or token ids ``[batch pos]`` with an optional
    ``attention_mask``. ``perturbation``: the push, ``None`` (magnitude 1, sign -1), a ``Perturb``
    used as a template (its ``layers``/``experts`` are ignored; it must have ``positions=None``:
    the push always applies at every position), ``{"magnitude": m, "sign": s}`` or ``(m, s)``.
    ``positions``: ``"last"`` reads the KL at each input's last non-padding token, ``"all"``
    averages it over its non-padding positions. ``layers``: MoE layer indices (default all).

    ``method``: ``"exact"``, ``"first_order"`` or ``"router_gradient"`` (module docstring). The
    gradient methods use ``n_targets`` backward passes per batch (times the number of positions for
    ``positions="all"``), on the ``n_targets`` most probable next tokens (``targets="top"``,
    probabilities renormalised; ``n_targets >= d_vocab`` takes the whole distribution) or as many
    samples from ``P`` (``targets="sample"``, drawn with ``seed`` and the batch's position).

    ``skip_unchanged``: pairs whose routing does not move beyond float32 rounding get effect 0
    without a forward (False runs every pair). ``max_tokens``: tokens per stacked forward (default
    1024 on CPU, 16384 on an accelerator; with ``positions="all"`` the exact method holds logits
    of that many tokens).
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
    method = _choice("method", method, METHODS)
    positions = _choice("positions", positions, POSITIONS)
    targets = _choice("targets", targets, TARGETS)
    spec = _perturb_spec(perturbation)
    chosen = _layers(model, layers)
    batch_size = _positive_int("batch_size", batch_size)
    n_targets = _positive_int("n_targets", n_targets)
    if max_tokens is None:
        # Stacked forwards beyond ~1k tokens run slower per token on a CPU (caches); GPUs want more.
        max_tokens = 1024 if model.device.type == "cpu" else 16384
    max_tokens = _positive_int("max_tokens", max_tokens)
    data = _Inputs(model, texts, attention_mask)
    gradient = method != "exact"
    if gradient and torch.is_inference_mode_enabled():
        raise InvalidInputError(
            f"method={method!r} needs autograd (backward passes), but torch.inference_mode() is on. Call it "
            "outside inference_mode (torch.no_grad() is fine), or use method='exact'."
        )
    settings = {
        "magnitude": spec.magnitude, "sign": spec.sign, "positions": positions, "n_inputs": data.n,
        "batch_size": batch_size, "skip_unchanged": bool(skip_unchanged), "max_tokens": max_tokens,
        "n_targets": n_targets if gradient else None, "targets": targets if gradient else None,
        "seed": seed if gradient and targets == "sample" else None,
    }
    n_experts = model.cfg.n_experts
    results = torch.zeros(data.n, len(chosen), n_experts, dtype=torch.float64)
    n_done = 0
    ckpt = None
    if checkpoint is not None:
        fingerprint = {"format": _CKPT_FORMAT, "version": _VERSION, "method": method, "layers": chosen,
                       "inputs": data.digest, "model": _model_fingerprint(model), **settings}
        ckpt = _Checkpoint(checkpoint, fingerprint)
        done = ckpt.resume()
        if done is not None:
            ckpt.probe = ckpt.saved_probe()
            _check_probe(model, data, ckpt.probe, ckpt.dir)
            n_done = done.shape[0]
            results[:n_done] = done
        else:
            ckpt.probe = _probe(model, data)
    from tqdm.auto import tqdm

    n_batches = math.ceil(data.n / batch_size)
    bar = tqdm(
        total=n_batches * len(chosen), initial=math.ceil(n_done / batch_size) * len(chosen), disable=not progress,
        unit="layer", desc=f"driver effects ({method})", dynamic_ncols=True,
    )
    try:
        for start in range(n_done, data.n, batch_size):
            stop = min(start + batch_size, data.n)
            ids, mask = data.batch(start, stop)
            bar.set_postfix_str(f"inputs {start}-{stop - 1} of {data.n}")
            if method == "exact":
                batch = exact_batch(model, ids, mask, chosen, spec, positions, skip_unchanged, max_tokens, bar.update)
            else:
                generator = torch.Generator().manual_seed(seed * 1_000_003 + start) if targets == "sample" else None
                batch = first_order_batch(
                    model, ids, mask, chosen, spec, positions, n_targets, targets, generator, method,
                    skip_unchanged, max_tokens, bar.update,
                )
            results[start:stop] = batch
            if ckpt is not None:
                ckpt.save(results[:stop])
    finally:
        bar.close()
    return DriverEffects(results.mean(0), tuple(chosen), n_experts, method, settings, results if per_input else None)
