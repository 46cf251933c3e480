"""Per-batch kernels of the driver-effect sweep: the exact one and the two gradient estimators.

:func:`moelens.analysis.drivers.driver_effects` owns the loop (inputs, batches, checkpoints,
progress, the result type); this module computes one batch: mostly the first-order estimate (hence
its name), plus the exact stacked sweep and the routing comparison both use. Everything is a
reconstruction (DESIGN.md section 4): ``CE(l, e) = E_x KL(P || Q_{l,e})``, ``Q`` the next-token
distribution under ``Perturb(l, e)``, the push applied at every position.

**Perturbed routing without the router.** Every method first needs the top-k of layer ``l`` under
the push of each expert. That is the family's routing rule applied to the clean router logits plus
``sign * magnitude`` on one expert, exactly what ``Perturb``'s hook does inside a forward; so one
router pass per batch serves all experts (:func:`perturbed_routing`). Where top-k set and weights
are unchanged (up to float32 rounding, :data:`ROUTING_TOL`) at every real token of an input, the
push cannot change anything downstream: effect 0, never run.

**First order ("local-exact, downstream-linear").** With ``u_y = log Q(y) - log P(y)`` and
``E_P[e^u] = 1``, ``KL(P||Q) = -E_P[u] = 1/2 E_P[u^2] + O(u^3)``. Linearising only the network
*downstream* of the MoE block of layer ``l``, ``u_y ~ g_y . Delta``, where ``Delta`` is the exact
change of the block output (experts entering or leaving the top-k included) and
``g_y = d log P(y) / d(block output at l)``; so ``KL ~ 1/2 sum_y w_y (g_y . Delta)^2`` (the mean
of ``g_y`` under ``P`` is 0). One clean forward and ``n_targets`` backward passes (``y`` the most
probable tokens with renormalised weights, or samples from ``P``) give ``g_y`` for every layer at
once. ``Delta`` is then split by token: where the selected set is unchanged and only weights move,
``Delta = sum_j dw_j E_j(x)`` with ``E_j`` the unweighted outputs of the clean top-k (one extra
block run per layer), so ``g . Delta = sum_j dw_j (g . E_j)`` needs no per-expert block run; where
the set changes (a swap), the block is re-run on those tokens only, as one-token rows under the
push. Both rely on the MoE block acting on each token separately, with an output linear in the
top-k weights: true of every registered family.

**Router gradient (cruder, cheaper).** ``u_y ~ delta * sum_pos d log P(y) / d z_{l,e}``, ``z`` the
router logits HF routes with: no per-layer work at all beyond the backward passes. Top-k selection
is piecewise constant, so this sees only how the weights of the selected experts move: an
unselected expert counts through the softmax denominator at most (not at all for renormalised
softmax or sigmoid routers), and a push that would swap an expert in or out of the top-k counts as
if no swap could happen. Routers that do not return their logits (DeepSeek-MoE remote code) are
refused with a clear error.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from moelens.architectures import resolve
from moelens.errors import InvalidInputError
from moelens.inputs import last_token_positions
from moelens.interventions import Perturb
from moelens.metrics import kl_divergence
from moelens.names import moe_name, resid_name

if TYPE_CHECKING:
    from moelens.cache import ActivationCache
    from moelens.model import HookedMoE

__all__ = ["PerturbSpec", "exact_batch", "first_order_batch", "perturbed_routing", "routing_change"]

# A weight change at or below float32 rounding of the routing (relative to max(1, |w|)) counts as
# "routing unchanged": the block output then differs from the clean one by rounding only.
ROUTING_TOL = 1e-6
# Gradients kept at once (bytes) when positions="all" asks for one backward pass per position.
_GRAD_BUDGET = 1 << 30


@dataclass(frozen=True)
class PerturbSpec:
    """The push of the sweep: ``sign * magnitude`` on one expert's router logit, every position."""

    magnitude: float
    sign: int

    @property
    def delta(self) -> float:
        return self.sign * self.magnitude

    def at(self, layer: int, experts: Tensor) -> Perturb:
        """The ``Perturb`` of ``layer`` with one target expert per batch row."""
        return Perturb(layer, experts, magnitude=self.magnitude, sign=self.sign)


class _NotInGraph(Exception):
    """A tensor we differentiate with respect to does not reach the logits."""


def perturbed_routing(
    model: HookedMoE, layer: int, logits: Tensor, experts: Tensor, spec: PerturbSpec, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Top-k ``(index, weights)`` ``[n_targets tokens k]`` of ``layer`` when each target of
    ``experts [n_targets]`` is pushed in turn, from the clean router logits ``[tokens n_experts]``.

    This is what ``Perturb`` does inside a forward (the same edit of the logits, then the family's
    routing rule, weights cast to the router's weight ``dtype``) without running the router's
    projection once per target: one router pass serves every expert.
    """
    push = torch.nn.functional.one_hot(experts, logits.shape[-1]).to(logits.dtype) * spec.delta  # [n n_experts]
    edited = logits.unsqueeze(0) + push.unsqueeze(1)  # [n tokens n_experts], as Perturb's hook edits them
    routing = model.spec.routing.route(edited.reshape(-1, logits.shape[-1]), _router_module(model, layer))
    shape = (len(experts), logits.shape[0], -1)
    return routing.index.view(shape), routing.weights.to(dtype).view(shape)


def _dense(index: Tensor, weights: Tensor, n_experts: int) -> Tensor:
    """``[... k]`` top-k -> ``[... n_experts]`` fp32 gate weights, 0 where not selected."""
    out = torch.zeros(*index.shape[:-1], n_experts, dtype=torch.float32, device=index.device)
    return out.scatter_(-1, index, weights.float())


def routing_change(
    index: Tensor, weights: Tensor, clean_index: Tensor, clean_weights: Tensor, n_experts: int, tol: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Compare a perturbed routing ``[rows pos k]`` with the clean one (broadcast over rows).

    Returns ``changed [rows pos]`` (some gate weight moved by more than ``tol * max(1, |w|)``),
    ``swapped [rows pos]`` (the selected *set* differs) and ``dense [rows pos n_experts]``, the
    perturbed gate weights.
    """
    dense = _dense(index, weights, n_experts)
    clean = _dense(clean_index, clean_weights, n_experts)
    changed = ((dense - clean).abs() > tol * clean.abs().clamp_min(1.0)).any(-1)
    swapped = (index.sort(-1).values != clean_index.sort(-1).values).any(-1)
    return changed | swapped, swapped, dense


def _changes(
    model: HookedMoE, layer: int, logits: Tensor, index: Tensor, weights: Tensor, spec: PerturbSpec, tol: float,
    budget: int,
):
    """For chunks of target experts: ``(experts [n], changed [n tokens], swapped [n tokens], dense
    [n tokens n_experts])`` against the clean routing ``index, weights [tokens k]``."""
    n_experts = model.cfg.n_experts
    chunk = max(1, budget // max(1, logits.shape[0]))  # targets per routing call
    for e0 in range(0, n_experts, chunk):
        experts = torch.arange(e0, min(e0 + chunk, n_experts), device=logits.device)
        new_index, new_weights = perturbed_routing(model, layer, logits, experts, spec, weights.dtype)
        changed, swapped, dense = routing_change(new_index, new_weights, index, weights, n_experts, tol)
        yield experts, changed, swapped, dense


# -- exact ------------------------------------------------------------------------------------------


def exact_batch(
    model: HookedMoE,
    ids: Tensor,
    mask: Tensor,
    layers: list[int],
    spec: PerturbSpec,
    positions: str,
    skip_unchanged: bool,
    max_tokens: int,
    tick: Callable[[], Any],
) -> Tensor:
    """Exact effects ``[batch moe_layer expert]`` (float64, CPU) of one batch."""
    batch = ids.shape[0]
    final = model.cfg.n_layers - 1
    # A backend that resumes from the residual stream (HookedMoE) runs layers l..end only; others
    # (nnsight) run full forwards of the same stacked rows (moelens.backends.protocol).
    resume = model.resumes_from_residual
    names = [resid_name(layer, "pre") for layer in layers] + [resid_name(final, "post")] if resume else []
    if skip_unchanged:
        names += [
            moe_name(layer, s) for layer in layers for s in ("hook_router_logits", "hook_topk_indices", "hook_topk_weights")
        ]
    out = torch.zeros(batch, len(layers), model.cfg.n_experts, dtype=torch.float64)
    real = mask.bool()
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids, names_filter=names, attention_mask=mask)
        last = last_token_positions(mask)
        rows = torch.arange(batch, device=ids.device)
        head = _last_token_head(model, cache[resid_name(final, "post")], logits, last) if positions == "last" and resume else None
        clean = logits[rows, last] if positions == "last" else logits  # [batch d_vocab] | [batch pos d_vocab]
        for li, layer in enumerate(layers):
            if skip_unchanged:
                b, e = _pairs(model, cache, layer, mask, spec, max_tokens)
            else:
                b, e = _all_pairs(batch, model.cfg.n_experts, ids.device)
            order = torch.sort(last[b], stable=True).indices  # short inputs together: little padding per chunk
            b, e = b[order], e[order]
            for rows in _chunks((last[b] + 1).tolist(), max_tokens):
                bi, ei = b[rows], e[rows]
                # Columns after every row's last real token change nothing before it (causal): drop them.
                width = int(last[bi].max()) + 1
                kwargs: dict[str, Any] = {"attention_mask": mask[bi, :width]}
                if resume:
                    kwargs["start_at_layer"] = layer
                if head is not None:
                    kwargs["stop_at_layer"] = model.cfg.n_layers  # residual entering the final norm
                # [rows width d_model] residual entering the layer, or the rows' token ids
                rows_in = cache[resid_name(layer, "pre")][bi, :width] if resume else ids[bi, :width]
                new = model.run_with_interventions(rows_in, [spec.at(layer, ei)], **kwargs)
                if positions == "last":
                    new = new[torch.arange(len(bi), device=new.device), last[bi]]  # [rows d_model|d_vocab]
                    kl = kl_divergence(clean[bi], head(new) if head is not None else new)
                else:
                    keep = real[bi, :width]
                    kl = kl_divergence(clean[bi, :width], new, mask=keep).sum(-1) / keep.sum(-1)
                out[bi.cpu(), li, ei.cpu()] = kl.cpu().double()
            tick()
    return out


def _chunks(widths: list[int], max_tokens: int):
    """Slices of consecutive rows (``widths`` ascending) holding at most ``max_tokens`` tokens once
    padded to their widest row (at least one row each)."""
    start = 0
    while start < len(widths):
        stop = start + 1
        while stop < len(widths) and (stop + 1 - start) * widths[stop] <= max_tokens:
            stop += 1
        yield slice(start, stop)
        start = stop


def _all_pairs(batch: int, n_experts: int, device: torch.device) -> tuple[Tensor, Tensor]:
    b = torch.arange(batch, device=device).repeat_interleave(n_experts)
    return b, torch.arange(n_experts, device=device).repeat(batch)


def _pairs(
    model: HookedMoE, cache: ActivationCache, layer: int, mask: Tensor, spec: PerturbSpec, max_tokens: int
) -> tuple[Tensor, Tensor]:
    """(input, expert) pairs whose push moves the routing of ``layer`` at some real token, from the
    clean router logits alone; the others have effect 0 (up to float32 rounding) and never run."""
    real = mask.bool()
    b_tok = real.nonzero(as_tuple=True)[0]  # [tokens] batch row of each real token
    logits, index, weights = (
        cache[moe_name(layer, s)][real] for s in ("hook_router_logits", "hook_topk_indices", "hook_topk_weights")
    )  # [tokens n_experts], [tokens k], [tokens k]
    moved = torch.zeros(model.cfg.n_experts, mask.shape[0], device=mask.device)  # [expert batch]
    for experts, changed, _, _ in _changes(model, layer, logits, index, weights, spec, ROUTING_TOL, 16 * max_tokens):
        moved[experts] = torch.zeros(len(experts), mask.shape[0], device=mask.device).index_add_(1, b_tok, changed.float())
    b, e = (moved.T > 0).nonzero(as_tuple=True)  # sorted by input, then expert
    return b, e


def _last_token_head(model: HookedMoE, final_resid: Tensor, logits: Tensor, last: Tensor) -> Callable | None:
    """Final norm + unembedding for last tokens only, if that reproduces the model's logits."""
    lm_head = model.hf_model.get_output_embeddings()
    if lm_head is None:
        return None

    def head(x: Tensor) -> Tensor:  # [rows d_model] -> [rows d_vocab]
        return lm_head(model.final_norm(x[:, None, :]))[:, 0]

    rows = torch.arange(len(last), device=last.device)
    ref = logits[rows, last].detach().float()
    got = head(final_resid[rows, last]).detach().float()
    scale = float(ref.abs().max()) or 1.0
    # A family that rescales or caps the logits after the unembedding fails this and keeps full logits.
    return head if got.shape == ref.shape and torch.allclose(got, ref, rtol=1e-4, atol=1e-5 * scale) else None


# -- first order ------------------------------------------------------------------------------------


@dataclass
class _CleanPass:
    """What the clean forward with gradients leaves behind for one batch."""

    logits: Tensor  # [batch pos d_vocab], in the autograd graph
    leaves: dict[int, Tensor]  # layer -> [batch pos d_model] zero leaf added to the block output
    router_logits: dict[int, Tensor]  # layer -> [batch pos n_experts] in the graph (router variant)
    moe_in: dict[int, Tensor]  # layer -> [batch pos d_model], detached


def _clean_pass(model: HookedMoE, ids: Tensor, mask: Tensor, layers: list[int], want_router: bool) -> _CleanPass:
    leaves: dict[int, Tensor] = {}
    moe_in: dict[int, Tensor] = {}
    router_logits: dict[int, Tensor] = {}

    def keep_in(x: Tensor, hook) -> Tensor | None:
        moe_in[hook.layer] = x.detach()
        if want_router and hook.layer == layers[0] and not x.requires_grad:
            # Frozen weights: a zero leaf makes everything downstream (routers included) differentiable.
            return x + torch.zeros_like(x, requires_grad=True)
        return None

    def add_leaf(x: Tensor, hook) -> Tensor:
        # d(log P)/d(leaf) is the total derivative through everything downstream of this block.
        leaves[hook.layer] = leaf = torch.zeros_like(x, requires_grad=True)
        return x + leaf

    hooks = [(moe_name(layer, "hook_in"), keep_in) for layer in layers]
    if not want_router:
        hooks += [(moe_name(layer, "hook_out"), add_leaf) for layer in layers]
    with ExitStack() as stack:
        if want_router:
            for layer in layers:
                stack.callback(_router_module(model, layer).register_forward_hook(_keep_router(model, layer, router_logits)).remove)
        logits = model.run_with_hooks(ids, hooks, attention_mask=mask)
    if want_router:
        batch, pos = ids.shape
        for z in router_logits.values():
            if not z.requires_grad or z.numel() != batch * pos * model.cfg.n_experts:
                raise _router_error(model)
    return _CleanPass(logits, leaves, router_logits, moe_in)


def _router_error(model: HookedMoE) -> InvalidInputError:
    return InvalidInputError(
        f"method='router_gradient' differentiates through the router logits that HF routes with, but the "
        f"{model.cfg.architecture} router does not return them (moelens recomputes them for its hooks). "
        "Use method='first_order' instead (exact routing, also cheap)."
    )


def _router_module(model: HookedMoE, layer: int) -> torch.nn.Module:
    block = resolve(model.layers[layer], model.spec.moe_block)
    return resolve(block, model.spec.router)


def _keep_router(model: HookedMoE, layer: int, store: dict[int, Tensor]) -> Callable:
    def hook(module, args, output) -> None:
        store[layer] = model.spec.router_io.unpack(output, args[0], module).logits

    return hook


def _targets(
    logp: Tensor, n_targets: int, targets: str, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Target tokens ``y [batch slot m]`` and weights ``w [batch slot m]`` (sum 1) from ``logp``."""
    if targets == "top":
        m = min(n_targets, logp.shape[-1])
        top = logp.topk(m, dim=-1)
        return top.indices, top.values.detach().softmax(-1)  # P renormalised over the top m
    probs = logp.detach().float().exp().cpu()  # [batch slot d_vocab]
    flat = probs.reshape(-1, probs.shape[-1])
    y = torch.multinomial(flat, n_targets, replacement=True, generator=generator)
    y = y.reshape(*probs.shape[:-1], n_targets).to(logp.device)
    return y, torch.full(y.shape, 1.0 / n_targets, device=logp.device)


def _slot_outputs(model: HookedMoE, layer: int, moe_in: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Clean routing and unweighted per-slot expert outputs of ``layer``, from one block run.

    Returns ``hook_router_logits [batch pos n_experts]``, ``hook_topk_indices``/``hook_topk_weights
    [batch pos k]``, ``hook_out [batch pos d_model]`` (fp32) and ``slots [batch pos k d_model]``
    (fp32, unweighted expert outputs), all from the same run.
    """
    store: dict[str, Tensor] = {}

    def keep(key: str) -> Callable:
        def fn(x: Tensor, hook) -> None:
            store[key] = x.detach().clone()

        return fn

    names = ("hook_router_logits", "hook_topk_indices", "hook_topk_weights", "hook_out")
    hooks = [(moe_name(layer, s), keep(s)) for s in names]
    expert_out = moe_name(layer, "hook_expert_out")
    fused = expert_out in model.hook_dict
    if fused:
        hooks.append((expert_out, keep("hook_expert_out")))
    with torch.no_grad():
        model.run_moe_block(layer, moe_in, hooks, attention_mask=mask)
        store["hook_out"] = store["hook_out"].float()
        if fused:
            store["slots"] = store.pop("hook_expert_out").float()
            return store
        # ModuleList experts: E_j = block(weight 1 on slot j, 0 elsewhere) - block(all weights 0).
        weights = store["hook_topk_weights"]
        name = moe_name(layer, "hook_topk_weights")

        def block_with(value: Tensor) -> Tensor:
            return model.run_moe_block(layer, moe_in, [(name, lambda x, hook: value)], attention_mask=mask).float()

        base = block_with(torch.zeros_like(weights))
        eye = torch.eye(weights.shape[-1], dtype=weights.dtype, device=weights.device)
        slots = [block_with(row.expand_as(weights).contiguous()) - base for row in eye]
        store["slots"] = torch.stack(slots, dim=2)  # [batch pos k d_model]
        return store


@dataclass
class _LayerDelta:
    """The exact change of one layer's block output for every target expert, in factored form,
    over the real tokens of the batch."""

    tok_b: Tensor  # [tokens] batch row of each real token
    tok_p: Tensor  # [tokens] its position
    dw: Tensor  # [n_experts tokens k] change of the clean slots' weights (tokens without a swap)
    slot_out: Tensor | None  # [tokens k d_model] unweighted outputs of the clean top-k experts
    swap_e: Tensor  # [n_swaps] target expert of each swapped (expert, token) pair
    swap_t: Tensor  # [n_swaps] its token
    swap_delta: Tensor  # [n_swaps d_model] block output change there (fp32)


def _layer_delta(
    model: HookedMoE, layer: int, moe_in: Tensor, mask: Tensor, spec: PerturbSpec, tol: float, max_tokens: int
) -> _LayerDelta:
    clean = _slot_outputs(model, layer, moe_in, mask)
    real = mask.bool()
    tok_b, tok_p = real.nonzero(as_tuple=True)
    logits, index, weights = (clean[s][real] for s in ("hook_router_logits", "hook_topk_indices", "hook_topk_weights"))
    dws, swap_e, swap_t = [], [], []
    with torch.no_grad():
        for experts, changed, swapped, dense in _changes(model, layer, logits, index, weights, spec, tol, 16 * max_tokens):
            weight_only = changed & ~swapped  # [n tokens]
            dw = dense.gather(-1, index.expand(len(experts), -1, -1)) - weights.float()  # [n tokens k]
            dws.append(torch.where(weight_only[..., None], dw, 0.0))
            e, t = swapped.nonzero(as_tuple=True)
            swap_e.append(experts[e])
            swap_t.append(t)
    dw = torch.cat(dws)
    swap_e, swap_t = torch.cat(swap_e), torch.cat(swap_t)
    tokens = moe_in[real]  # [tokens d_model]
    swap_delta = _swap_delta(model, layer, tokens, clean["hook_out"][real], swap_e, swap_t, spec, max_tokens)
    slot_out = clean["slots"][real] if bool(dw.any()) else None
    return _LayerDelta(tok_b, tok_p, dw, slot_out, swap_e, swap_t, swap_delta)


def _swap_delta(
    model: HookedMoE, layer: int, tokens: Tensor, clean_out: Tensor, e: Tensor, t: Tensor, spec: PerturbSpec,
    max_tokens: int,
) -> Tensor:
    """Block output change ``[n d_model]`` of each swapped (expert, token) pair. The block acts on
    each token separately, so every pair is its own one-token row."""
    out = torch.zeros(len(e), tokens.shape[-1], dtype=torch.float32, device=tokens.device)
    with torch.no_grad():
        for i in range(0, len(e), max_tokens):
            sl = slice(i, i + max_tokens)
            rows = tokens[t[sl]].unsqueeze(1)  # [n d_model] -> [n 1 d_model]
            ones = torch.ones(rows.shape[:2], dtype=torch.long, device=rows.device)
            new = model.run_moe_block(layer, rows, [spec.at(layer, e[sl])], attention_mask=ones)
            out[sl] = new[:, 0].float() - clean_out[t[sl]]
    return out


@torch.enable_grad()  # also inside a caller's torch.no_grad(): the backward passes need a graph
def first_order_batch(
    model: HookedMoE,
    ids: Tensor,
    mask: Tensor,
    layers: list[int],
    spec: PerturbSpec,
    positions: str,
    n_targets: int,
    targets: str,
    generator: torch.Generator | None,
    variant: str,
    skip_unchanged: bool,
    max_tokens: int,
    tick: Callable[[], None],
) -> Tensor:
    """Estimated effects ``[batch moe_layer expert]`` (float64, CPU) of one batch.

    ``variant`` is ``"first_order"`` (exact block change, linear downstream) or
    ``"router_gradient"`` (linear in the router logit, blind to top-k swaps).
    """
    batch, pos = ids.shape
    router = variant == "router_gradient"
    clean = _clean_pass(model, ids, mask, layers, want_router=router)
    # Slots: the positions whose next-token distribution counts, [batch slot].
    if positions == "last":
        real = mask.bool()
        slot_pos = (real * torch.arange(1, pos + 1, device=mask.device)).argmax(-1, keepdim=True)
        slot_valid = torch.ones(batch, 1, dtype=torch.bool, device=mask.device)
    else:
        slot_pos = torch.arange(pos, device=mask.device).expand(batch, pos)
        slot_valid = mask.bool()
    logits = clean.logits.gather(1, slot_pos[..., None].expand(-1, -1, clean.logits.shape[-1]))
    logp = torch.log_softmax(logits.float(), dim=-1)  # [batch slot d_vocab]
    y, w = _targets(logp, n_targets, targets, generator)  # [batch slot m]
    chosen = logp.gather(-1, y)  # [batch slot m], in the graph
    m_count = y.shape[-1]
    n_experts = model.cfg.n_experts
    if router:
        inputs = [clean.router_logits[layer] for layer in layers]
        shapes = [(batch, pos, n_experts)] * len(layers)
    else:
        inputs = [clean.leaves[layer] for layer in layers]
        shapes = [tuple(t.shape) for t in inputs]
    per_slot_bytes = m_count * sum(t.numel() for t in inputs) * 4
    slot_chunk = max(1, _GRAD_BUDGET // max(1, per_slot_bytes))
    n_slots = slot_pos.shape[1]
    kl = torch.zeros(n_slots, n_experts, batch, len(layers), dtype=torch.float32, device=ids.device)
    deltas: dict[int, _LayerDelta] = {}  # kept across slot chunks only when there are several
    tol = ROUTING_TOL if skip_unchanged else 0.0
    for s0 in range(0, n_slots, slot_chunk):
        slots = list(range(s0, min(s0 + slot_chunk, n_slots)))
        try:
            grads = _gradients(chosen, slot_valid, slots, m_count, inputs, shapes, last=slots[-1] == n_slots - 1)
        except _NotInGraph:
            raise _router_error(model) from None
        for li, layer in enumerate(layers):
            g = grads[li]  # [slot m batch pos d_model] (or [... n_experts] for router logits)
            if router:
                s = spec.delta * g.sum(3).permute(0, 1, 3, 2)  # [slot m n_experts batch]
            else:
                delta = deltas.get(layer) or _layer_delta(model, layer, clean.moe_in[layer], mask, spec, tol, max_tokens)
                if n_slots > slot_chunk:
                    deltas[layer] = delta
                s = _contract(g, delta, n_experts)
            weight = w[:, slots].permute(1, 2, 0)[:, :, None, :]  # [slot m 1 batch]
            kl[slots, :, :, li] = 0.5 * (weight * s**2).sum(1)
            if s0 == 0:
                tick()
    valid = slot_valid.T.float()[:, None, :, None]  # [slot 1 batch 1]
    per_input = (kl * valid).sum(0) / valid.sum(0)  # [n_experts batch moe_layer]
    return per_input.permute(1, 2, 0).cpu().double()


def _gradients(
    chosen: Tensor, valid: Tensor, slots: list[int], m_count: int, inputs: list[Tensor],
    shapes: list[tuple[int, ...]], last: bool,
) -> list[Tensor]:
    """``d log P(y_m) / d input`` for each slot and target: per input ``[slot m *shape]`` fp32.

    Rows of a batch never interact, so one backward pass per (slot, m) serves every row.
    """
    out = [
        torch.zeros(len(slots), m_count, *shape, dtype=torch.float32, device=t.device)
        for t, shape in zip(inputs, shapes, strict=True)
    ]
    for si, slot in enumerate(slots):
        if not bool(valid[:, slot].any()):
            continue
        for m in range(m_count):
            objective = (chosen[:, slot, m] * valid[:, slot]).sum()
            keep = not (last and si == len(slots) - 1 and m == m_count - 1)  # free the graph at the end
            grads = torch.autograd.grad(objective, inputs, retain_graph=keep, allow_unused=True)
            for store, grad in zip(out, grads, strict=True):
                if grad is None:
                    raise _NotInGraph
                store[si, m] = grad.reshape(store.shape[2:]).float()
    return out


def _contract(g: Tensor, delta: _LayerDelta, n_experts: int) -> Tensor:
    """``g . Delta`` for every target expert: ``[slot m n_experts batch]``."""
    n_slot, m_count, batch = g.shape[:3]
    g = g[:, :, delta.tok_b, delta.tok_p]  # [slot m tokens d_model]
    per_token = torch.zeros(n_slot, m_count, n_experts, g.shape[2], dtype=torch.float32, device=g.device)
    if delta.slot_out is not None:
        h = torch.einsum("smtd,tjd->smtj", g, delta.slot_out)  # g . E_j per token and clean slot
        per_token += torch.einsum("smtj,etj->smet", h, delta.dw)
    if len(delta.swap_e):
        v = (g[:, :, delta.swap_t] * delta.swap_delta).sum(-1)  # [slot m n_swaps]
        flat = per_token.view(n_slot, m_count, -1)  # [slot m n_experts*tokens]
        flat.index_add_(2, delta.swap_e * g.shape[2] + delta.swap_t, v)
    s = torch.zeros(n_slot, m_count, n_experts, batch, dtype=torch.float32, device=g.device)
    return s.index_add_(3, delta.tok_b, per_token)  # sum each input's tokens
