"""Causal mediation through routing: how much of an input change reaches the output via the router.

For a pair of token-aligned inputs (``clean``, ``corrupted``: same length after tokenization) and a
``metric`` on logits (``[batch pos d_vocab] -> [batch]``), every effect is
``metric(patched or corrupted run) - metric(clean run)``, averaged over pairs:

- **total**: ``metric(corrupted) - metric(clean)``;
- **indirect** ``[moe_layer expert]``: the clean input, with one expert's routing patched in from the
  corrupted run. Patching expert ``e`` of layer ``l`` sets, at every position, ``e``'s *dense* gate
  weight (0 where it is not selected) to its value in the corrupted run while every other expert of
  ``l`` keeps its clean gate, so a position may run ``k + 1`` or ``k - 1`` experts. The layers after
  ``l`` route by their own rule on the patched residual stream (standard activation patching: only
  the mediator is fixed);
- **by_layer** ``[moe_layer]``: all of layer ``l``'s routing (its top-k and weights) patched at every
  position; **by_position** ``[moe_layer pos]``: all of layer ``l``'s routing patched at one position;
- **all_routing**: the routing of every MoE layer patched; **direct** = total - all_routing, the part
  of the effect that does not go through the routers' decisions.

How it is computed: one clean and one corrupted forward per group of equal-length pairs; every patch
of layer ``l`` starts from the clean residual stream entering ``l`` (``start_at_layer``: the clean
prefix is reused) and many patches run as the rows of one batch, each row carrying its own patch
(the exact driver sweep's scheme). A single-expert patch leaves the MoE input of ``l`` clean, so it
is applied as an exact change of the block output, ``C_e(x, w_corrupted) - C_e(x, w_clean)``
(:func:`moelens.analysis._routing_patch.expert_contribution`); layer and position patches replace the
top-k indices and weights. A patch that changes no gate at any position has effect exactly 0 and is
not run.

>>> from moelens import HookedMoE
>>> from moelens.testing import tiny_model
>>> model = HookedMoE.from_hf(tiny_model("mixtral"))
>>> med = routing_mediation(model, torch.tensor([[5, 6, 7, 8]]), torch.tensor([[5, 9, 7, 8]]), progress=False)
>>> med.indirect.shape  # [moe_layer expert]
torch.Size([2, 4])
>>> abs(med.all_routing + med.direct - med.total) < 1e-12
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from moelens.checkpoints import callable_identity
from moelens.errors import InvalidInputError
from moelens.metrics import kl_divergence
from moelens.names import moe_name, resid_name
from moelens.runner import SweepRunner

from .._routing_patch import dense_gates, expert_contribution
from ..drivers.options import parse_layers, positive_int
from .inputs import experts_list, pairs_digest, token_pairs
from .result import Mediation

if TYPE_CHECKING:
    from moelens.model import HookedMoE

__all__ = ["Mediation", "logit_diff", "routing_mediation"]

Metric = Callable[[Tensor], Tensor]


def logit_diff(model: HookedMoE, answer: str | int, wrong: str | int) -> Metric:
    """Metric ``logits[:, -1, answer] - logits[:, -1, wrong]``; a str is tokenized (it must be one
    token, e.g. ``" positive"``), an int is a token id.

    >>> from moelens import HookedMoE
    >>> from moelens.testing import tiny_model
    >>> metric = logit_diff(HookedMoE.from_hf(tiny_model("mixtral")), 3, 4)
    >>> metric(torch.zeros(2, 5, 97)).tolist()
    [0.0, 0.0]
    """
    a, b = _token_id(model, answer), _token_id(model, wrong)

    def metric(logits: Tensor) -> Tensor:
        return logits[:, -1, a].float() - logits[:, -1, b].float()

    metric.__name__ = f"logit_diff({answer!r}, {wrong!r})"
    metric.moelens_id = f"moelens.logit_diff({a}, {b})"  # a stable identity for checkpoints
    return metric


def _token_id(model: HookedMoE, token: str | int) -> int:
    if isinstance(token, int) and not isinstance(token, bool):
        if not 0 <= token < model.cfg.d_vocab:
            raise InvalidInputError(f"token id {token} is outside the vocabulary [0, {model.cfg.d_vocab - 1}].")
        return token
    if not isinstance(token, str) or model.tokenizer is None:
        raise InvalidInputError(f"answer token {token!r}: pass a token id (int), or a str with a model that has a tokenizer.")
    ids = model.tokenizer(token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise InvalidInputError(f"answer {token!r} tokenizes to {len(ids)} tokens {ids}; pass one token (e.g. with a leading space) or its id.")
    return int(ids[0])


class _MetricFn:
    """The user's metric, or the built-in KL, evaluated on rows that belong to given pairs."""

    def __init__(self, metric: Metric | str | None):
        if metric is None or metric == "kl":
            self.fn, self.name = None, "kl"
        elif callable(metric):
            self.fn, self.name = metric, getattr(metric, "__name__", type(metric).__name__)
        else:
            raise InvalidInputError(f"metric={metric!r}: pass a callable logits [batch pos d_vocab] -> [batch], or 'kl'.")
        self.reference: Tensor | None = None  # [pairs d_vocab] clean last-position logits (KL)

    def identity(self, given: str | None) -> str:
        """The metric's name in a checkpoint's fingerprint (a lambda or closure is refused)."""
        return "kl" if self.fn is None and given is None else callable_identity(self.fn, given)

    def __call__(self, logits: Tensor, pairs: Tensor) -> Tensor:
        if self.fn is None:
            return kl_divergence(self.reference[pairs.to(logits.device)], logits[:, -1]).double().cpu()  # KL(P_clean || P_row)
        value = self.fn(logits)
        if not isinstance(value, Tensor) or tuple(value.shape) != (logits.shape[0],):
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise InvalidInputError(f"metric {self.name} must map logits {tuple(logits.shape)} [batch pos d_vocab] to [batch]; it returned {shape}.")
        return value.detach().double().cpu()


# -- the sweep --------------------------------------------------------------------------------------


def routing_mediation(
    model: HookedMoE,
    clean: str | Sequence[str] | Tensor,
    corrupted: str | Sequence[str] | Tensor,
    metric: Metric | str | None = None,
    layers: int | Sequence[int] | None = None,
    experts: int | Sequence[int] | None = None,
    *,
    positions: bool = True,
    max_tokens: int | None = None,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    metric_id: str | None = None,
) -> Mediation:
    """Total, indirect (per expert, per layer, per position), all-routing and direct effects.

    ``clean``/``corrupted``: texts (tokenized one by one), token ids ``[pairs pos]`` or lists of 1-D
    token-id tensors; pair ``i`` is ``(clean[i], corrupted[i])`` and must have one length (a
    different length raises :class:`~moelens.errors.InvalidInputError` naming the pair).
    ``metric``: a callable ``logits [batch pos d_vocab] -> [batch]`` (e.g. :func:`logit_diff`), or
    ``None``/``"kl"``: ``KL(P_clean || P)`` of the last-position distribution. ``layers``/``experts``:
    the MoE layers and experts whose indirect effect is computed (default all; the others are NaN).
    ``positions=False`` skips ``by_position``. ``max_tokens``: tokens per stacked forward.
    ``checkpoint``: a folder; the per-pair effects are saved atomically after each group of pairs and
    a call with the same model, pairs, metric and arguments resumes there (same result as an
    uninterrupted run); the metric must then be ``"kl"``, :func:`logit_diff`, a named top-level
    function, or be named by ``metric_id=`` (a lambda or closure is refused, since two of them look
    alike). See :mod:`moelens.checkpoints` for what happens when anything differs.
    Definitions in the module docstring; everything runs under ``no_grad``.

    >>> from moelens import HookedMoE
    >>> from moelens.testing import tiny_model
    >>> model = HookedMoE.from_hf(tiny_model("qwen2_moe"))
    >>> same = torch.tensor([[4, 5, 6]])
    >>> routing_mediation(model, same, same, progress=False).total
    0.0
    """
    pairs = token_pairs(model, clean, corrupted)
    metric_fn = _MetricFn(metric)
    chosen = list(parse_layers(model, layers))
    chosen_experts = experts_list(model, experts)
    if max_tokens is None:
        max_tokens = 2048 if model.device.type == "cpu" else 32768
    max_tokens = positive_int("max_tokens", max_tokens)
    n, n_layers, n_experts = len(pairs), len(chosen), model.cfg.n_experts
    max_pos = max(len(a) for a, _ in pairs)
    result = {
        "total": torch.zeros(n, dtype=torch.float64),
        "all_routing": torch.zeros(n, dtype=torch.float64),
        "indirect": torch.full((n, n_layers, n_experts), float("nan"), dtype=torch.float64),
        "by_layer": torch.zeros(n, n_layers, dtype=torch.float64),
        "by_position": torch.full((n, n_layers, max_pos), float("nan"), dtype=torch.float64),
    }
    result["indirect"][:, :, chosen_experts] = 0.0
    groups: dict[int, list[int]] = {}
    for i, (a, _) in enumerate(pairs):
        groups.setdefault(len(a), []).append(i)
    chunks = [(length, idx[s : s + max(1, max_tokens // length)]) for length, idx in sorted(groups.items())
              for s in range(0, len(idx), max(1, max_tokens // length))]
    fingerprint = None
    if checkpoint is not None:
        fingerprint = {"format": "moelens.routing_mediation.checkpoint", "version": 2, "pairs": pairs_digest(pairs),
                       "metric": metric_fn.identity(metric_id), "layers": chosen, "experts": chosen_experts,
                       "positions": bool(positions), "max_tokens": max_tokens}
    run = SweepRunner("routing_mediation", len(chunks), model=model, checkpoint=checkpoint, fingerprint=fingerprint,
                      progress=progress, desc="routing mediation", unit="layer", units_per_step=n_layers + 1)
    saved = run.resume()
    if saved is not None:
        if set(saved) != set(result) or any(saved[k].shape != result[k].shape for k in result):
            raise run.refuse("does not hold the effects of this run")
        result = saved
    with torch.no_grad():
        for step in run:
            length, idx = chunks[step]
            device = model.device
            ids_c = torch.stack([pairs[i][0] for i in idx]).to(device)
            ids_x = torch.stack([pairs[i][1] for i in idx]).to(device)
            group = _Group(model, ids_c, ids_x, metric_fn, chosen, chosen_experts, positions, max_tokens)
            rows = torch.tensor(idx)
            result["total"][rows] = group.total
            result["all_routing"][rows] = group.all_routing()
            run.update()
            for li, layer in enumerate(chosen):
                indirect, by_layer, by_position = group.layer(layer)
                result["indirect"][rows, li] = torch.where(torch.isnan(result["indirect"][rows, li]), float("nan"), indirect)
                result["by_layer"][rows, li] = by_layer
                if positions:
                    result["by_position"][rows, li, :length] = by_position
                run.update()
            run.save(result, step)
    settings = {
        "metric": metric_fn.name, "n_pairs": n, "experts": chosen_experts, "positions": bool(positions),
        "max_tokens": max_tokens,
    }
    return Mediation(moe_layers=tuple(chosen), n_experts=n_experts, settings=settings, **result)


class _Group:
    """Clean and corrupted runs of a group of equal-length pairs, and the patches run on them."""

    def __init__(self, model, ids_c, ids_x, metric_fn, chosen, experts, positions, max_tokens):
        self.model, self.metric_fn, self.experts, self.positions = model, metric_fn, experts, positions
        self.max_tokens = max_tokens
        self.moe_layers = list(model.cfg.moe_layers)
        routing = ("hook_topk_indices", "hook_topk_weights")
        names = [resid_name(layer, "pre") for layer in self.moe_layers]
        names += [moe_name(layer, s) for layer in self.moe_layers for s in (*routing, "hook_in")]
        logits_c, self.clean = model.run_with_cache(ids_c, names_filter=names)
        logits_x, self.corrupt = model.run_with_cache(ids_x, names_filter=[moe_name(layer, s) for layer in self.moe_layers for s in routing])
        metric_fn.reference = logits_c[:, -1]
        self.pairs = torch.arange(len(ids_c))
        self.m_clean = metric_fn(logits_c, self.pairs)  # [g] float64
        self.total = metric_fn(logits_x, self.pairs) - self.m_clean
        self.length = ids_c.shape[1]

    def gates(self, cache, layer: int) -> Tensor:
        index, weights = (cache[moe_name(layer, s)] for s in ("hook_topk_indices", "hook_topk_weights"))
        return dense_gates(index, weights, self.model.cfg.n_experts)  # [g pos n_experts]

    def all_routing(self) -> Tensor:
        """Every MoE layer's routing patched at every position, from the first MoE layer on."""
        g = len(self.pairs)
        moved = torch.zeros(g, dtype=torch.bool)
        for layer in self.moe_layers:
            moved |= (self.gates(self.clean, layer) != self.gates(self.corrupt, layer)).flatten(1).any(1).cpu()
        rows = self.pairs[moved]
        out = torch.zeros(g, dtype=torch.float64)
        full = torch.ones(len(rows), self.length, dtype=torch.bool)
        if len(rows):
            patches = {layer: full for layer in self.moe_layers}
            out[rows] = self._run(self.moe_layers[0], rows, patches, None)
        return out

    def layer(self, layer: int) -> tuple[Tensor, Tensor, Tensor]:
        """``indirect [g n_experts]``, ``by_layer [g]``, ``by_position [g pos]`` of one layer."""
        g, length, n_experts = len(self.pairs), self.length, self.model.cfg.n_experts
        gate_c, gate_x = self.gates(self.clean, layer), self.gates(self.corrupt, layer)
        differs = (gate_c != gate_x).cpu()  # [g pos n_experts]
        rows_pair, rows_expert, rows_mask = [], [], []
        for e in self.experts:  # one row per (pair, expert) whose gate moves somewhere
            for p in differs[:, :, e].any(1).nonzero()[:, 0].tolist():
                rows_pair.append(p), rows_expert.append(e), rows_mask.append(torch.zeros(length, dtype=torch.bool))
        n_expert_rows = len(rows_pair)
        layer_moved = differs.any(-1)  # [g pos]
        for p in layer_moved.any(1).nonzero()[:, 0].tolist():
            rows_pair.append(p), rows_expert.append(-1), rows_mask.append(torch.ones(length, dtype=torch.bool))
        n_layer_rows = len(rows_pair) - n_expert_rows
        if self.positions:
            for p, t in layer_moved.nonzero().tolist():
                mask = torch.zeros(length, dtype=torch.bool)
                mask[t] = True
                rows_pair.append(p), rows_expert.append(-1), rows_mask.append(mask)
        indirect = torch.zeros(g, n_experts, dtype=torch.float64)
        by_layer = torch.zeros(g, dtype=torch.float64)
        by_position = torch.zeros(g, length, dtype=torch.float64)
        if not rows_pair:
            return indirect, by_layer, by_position
        pair = torch.tensor(rows_pair)
        expert = torch.tensor(rows_expert)
        mask = torch.stack(rows_mask)  # [rows pos]
        delta = self._expert_deltas(layer, pair[:n_expert_rows], expert[:n_expert_rows], differs, gate_c, gate_x)
        effect = self._run(layer, pair, {layer: mask}, (n_expert_rows, delta))
        e_rows = slice(0, n_expert_rows)
        indirect[pair[e_rows], expert[e_rows]] = effect[e_rows]
        l_rows = slice(n_expert_rows, n_expert_rows + n_layer_rows)
        by_layer[pair[l_rows]] = effect[l_rows]
        p_rows = slice(n_expert_rows + n_layer_rows, None)
        by_position[pair[p_rows], mask[p_rows].float().argmax(1)] = effect[p_rows]
        return indirect, by_layer, by_position

    def _expert_deltas(self, layer, pair, expert, differs, gate_c, gate_x) -> tuple[Tensor, Tensor, Tensor]:
        """Block-output changes of the single-expert rows, at the tokens where the gate moves:
        ``(row [m], pos [m], delta [m d_model])``."""
        moved = differs[pair, :, expert]  # [expert_rows pos]
        row, pos = moved.nonzero(as_tuple=True)
        p, e = pair[row], expert[row]
        device = self.model.device
        tokens = self.clean[moe_name(layer, "hook_in")][p.to(device), pos.to(device)]  # [m d_model]
        e_dev = e.to(device)
        w_x = gate_x[p.to(device), pos.to(device), e_dev]
        w_c = gate_c[p.to(device), pos.to(device), e_dev]
        both = expert_contribution(self.model, layer, torch.cat([tokens, tokens]), torch.cat([e_dev, e_dev]), torch.cat([w_x, w_c]))
        return row, pos, both[: len(row)] - both[len(row) :]

    def _run(self, start: int, pair: Tensor, patches: dict[int, Tensor], deltas) -> Tensor:
        """Metric effect ``[rows]`` of rows starting at MoE layer ``start``: ``patches`` maps a layer
        to the positions ``[rows pos]`` whose top-k comes from the corrupted run; ``deltas`` =
        ``(n_rows_with_delta, (row, pos, delta))`` adds block-output changes at ``start``."""
        out = torch.zeros(len(pair), dtype=torch.float64)
        per_chunk = max(1, self.max_tokens // self.length)
        device = self.model.device
        for c0 in range(0, len(pair), per_chunk):
            sl = slice(c0, c0 + per_chunk)
            rows = pair[sl].to(device)
            hooks = []
            for layer, mask in patches.items():
                m = mask[sl].to(device)
                if bool(m.any()):
                    hooks += self._topk_hooks(layer, rows, m)
            if deltas is not None and c0 < deltas[0]:
                hooks.append((moe_name(start, "hook_out"), self._delta_hook(deltas[1], c0, len(rows))))
            resid = self.clean[resid_name(start, "pre")][rows]
            logits = self.model.run_with_hooks(resid, hooks, start_at_layer=start)
            out[sl] = self.metric_fn(logits, pair[sl]) - self.m_clean[pair[sl]]
        return out

    def _topk_hooks(self, layer: int, rows: Tensor, mask: Tensor) -> list:
        keep = mask[..., None]  # [rows pos 1]
        new = {s: self.corrupt[moe_name(layer, s)][rows] for s in ("hook_topk_indices", "hook_topk_weights")}

        def patch(value: Tensor, hook) -> Tensor:
            return torch.where(keep, new[hook.name.rsplit(".", 1)[-1]].to(value.dtype), value)

        return [(moe_name(layer, s), patch) for s in new]

    def _delta_hook(self, deltas: tuple[Tensor, Tensor, Tensor], c0: int, n_rows: int) -> Callable:
        row, pos, delta = deltas
        here = (row >= c0) & (row < c0 + n_rows)
        r, p, d = row[here] - c0, pos[here], delta[here]

        def add(value: Tensor, hook) -> Tensor:
            change = torch.zeros(value.shape, dtype=torch.float32, device=value.device)
            change[r.to(value.device), p.to(value.device)] = d
            return (value.float() + change).to(value.dtype)

        return add
