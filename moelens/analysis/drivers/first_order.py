"""The two gradient estimators of one batch: first order and router gradient.

Both reconstruct ``CE(l, e) = E_x KL(P || Q_{l,e})`` (DESIGN.md section 4) without a forward per
(layer, expert): :func:`moelens.analysis.drivers.driver_effects` owns the loop.

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

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from moelens.errors import InvalidInputError
from moelens.hook_points import HookPoint
from moelens.names import moe_name

from .options import SweepOptions
from .routing import ROUTING_TOL, changes

if TYPE_CHECKING:
    from moelens.model import HookedMoE

__all__ = ["first_order_batch"]

# Gradients kept at once (bytes) when positions="all" asks for one backward pass per position.
_GRAD_BUDGET = 1 << 30


@dataclass
class _CleanPass:
    """What the clean forward with gradients leaves behind for one batch."""

    logits: Tensor  # [batch pos d_vocab], in the autograd graph
    # layer -> zero leaf added to the block output [batch pos d_model], or to the router logits
    # [batch pos n_experts] (router variant)
    leaves: dict[int, Tensor]
    moe_in: dict[int, Tensor]  # layer -> [batch pos d_model], detached


def _clean_pass(model: "HookedMoE", ids: Tensor, mask: Tensor, layers: tuple[int, ...], router: bool) -> _CleanPass:
    leaves: dict[int, Tensor] = {}
    moe_in: dict[int, Tensor] = {}

    def keep_in(x: Tensor, hook: HookPoint) -> None:
        moe_in[hook.layer] = x.detach()

    def add_leaf(x: Tensor, hook: HookPoint) -> Tensor:
        # d(log P)/d(leaf) is the total derivative through everything downstream of this activation.
        # On the router logits, the returned tensor re-routes by the family's rule (same values),
        # so the gradient flows through the routing weights whatever the router returns.
        leaves[hook.layer] = leaf = torch.zeros_like(x, requires_grad=True)
        return x + leaf

    at = "hook_router_logits" if router else "hook_out"
    hooks = [(moe_name(layer, "hook_in"), keep_in) for layer in layers]
    hooks += [(moe_name(layer, at), add_leaf) for layer in layers]
    logits = model.run_with_hooks(ids, hooks, attention_mask=mask)
    return _CleanPass(logits, leaves, moe_in)


class _NotInGraph(Exception):
    """A tensor we differentiate with respect to does not reach the logits."""


def _router_error(model: "HookedMoE") -> InvalidInputError:
    return InvalidInputError(
        f"method='router_gradient' differentiates through the routing weights, but the {model.cfg.architecture} "
        "MoE block runs its experts without autograd in eval mode (the remote code's moe_infer), so no "
        "gradient reaches the router logits. Use method='first_order' instead (exact routing, also cheap)."
    )


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


def _slot_outputs(model: "HookedMoE", layer: int, moe_in: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Clean routing and unweighted per-slot expert outputs of ``layer``, from one block run.

    Returns ``hook_router_logits [batch pos n_experts]``, ``hook_topk_indices``/``hook_topk_weights
    [batch pos k]``, ``hook_out [batch pos d_model]`` (fp32) and ``slots [batch pos k d_model]``
    (fp32, unweighted expert outputs), all from the same run.
    """
    store: dict[str, Tensor] = {}

    def keep(key: str) -> Callable:
        def fn(x: Tensor, hook: HookPoint) -> None:
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
    model: "HookedMoE", layer: int, moe_in: Tensor, mask: Tensor, options: SweepOptions, tol: float, pushed: Tensor
) -> _LayerDelta:
    clean = _slot_outputs(model, layer, moe_in, mask)
    real = pushed.bool()  # the pushed real tokens: elsewhere the block output does not change
    tok_b, tok_p = real.nonzero(as_tuple=True)
    logits, index, weights = (clean[s][real] for s in ("hook_router_logits", "hook_topk_indices", "hook_topk_weights"))
    dws, swap_e, swap_t = [], [], []
    with torch.no_grad():
        for experts, changed, swapped, dense in changes(model, layer, logits, index, weights, options, tol, 16 * options.max_tokens):
            weight_only = changed & ~swapped  # [n tokens]
            dw = dense.gather(-1, index.expand(len(experts), -1, -1)) - weights.float()  # [n tokens k]
            dws.append(torch.where(weight_only[..., None], dw, 0.0))
            e, t = swapped.nonzero(as_tuple=True)
            swap_e.append(experts[e])
            swap_t.append(t)
    dw = torch.cat(dws)
    swap_e, swap_t = torch.cat(swap_e), torch.cat(swap_t)
    tokens = moe_in[real]  # [tokens d_model]
    swap_delta = _swap_delta(model, layer, tokens, clean["hook_out"][real], swap_e, swap_t, options)
    slot_out = clean["slots"][real] if bool(dw.any()) else None
    return _LayerDelta(tok_b, tok_p, dw, slot_out, swap_e, swap_t, swap_delta)


def _swap_delta(
    model: "HookedMoE", layer: int, tokens: Tensor, clean_out: Tensor, e: Tensor, t: Tensor, options: SweepOptions
) -> Tensor:
    """Block output change ``[n d_model]`` of each swapped (expert, token) pair. The block acts on
    each token separately, so every pair is its own one-token row."""
    out = torch.zeros(len(e), tokens.shape[-1], dtype=torch.float32, device=tokens.device)
    with torch.no_grad():
        for i in range(0, len(e), options.max_tokens):
            sl = slice(i, i + options.max_tokens)
            rows = tokens[t[sl]].unsqueeze(1)  # [n d_model] -> [n 1 d_model]
            ones = torch.ones(rows.shape[:2], dtype=torch.long, device=rows.device)
            new = model.run_moe_block(layer, rows, [options.at(layer, e[sl])], attention_mask=ones)
            out[sl] = new[:, 0].float() - clean_out[t[sl]]
    return out


@torch.enable_grad()  # also inside a caller's torch.no_grad(): the backward passes need a graph
def first_order_batch(
    model: "HookedMoE",
    ids: Tensor,
    mask: Tensor,
    options: SweepOptions,
    generator: torch.Generator | None,
    tick: Callable[[], Any],
    where: Tensor | None = None,
) -> Tensor:
    """Estimated effects ``[batch moe_layer expert]`` (float64, CPU) of one batch.

    ``options.method`` is ``"first_order"`` (exact block change, linear downstream) or
    ``"router_gradient"`` (linear in the router logit, blind to top-k swaps); ``generator`` draws
    the targets when ``options.targets == "sample"``; ``where [batch pos]`` the pushed tokens (None:
    all). The block change is zero at unpushed tokens (the block acts on each token separately).

    >>> from moelens import HookedMoE
    >>> from moelens.testing import tiny_model
    >>> from .options import parse_push
    >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
    >>> options = SweepOptions("first_order", parse_push(None), "last", (0, 1))
    >>> ids = torch.tensor([[5, 6, 7]])
    >>> first_order_batch(model, ids, torch.ones_like(ids), options, None, lambda: None).shape
    torch.Size([1, 2, 4])
    """
    batch, pos = ids.shape
    layers = options.layers
    router = options.method == "router_gradient"
    clean = _clean_pass(model, ids, mask, layers, router)
    # Slots: the positions whose next-token distribution counts, [batch slot].
    if options.positions == "last":
        real = mask.bool()
        slot_pos = (real * torch.arange(1, pos + 1, device=mask.device)).argmax(-1, keepdim=True)
        slot_valid = torch.ones(batch, 1, dtype=torch.bool, device=mask.device)
    else:
        slot_pos = torch.arange(pos, device=mask.device).expand(batch, pos)
        slot_valid = mask.bool()
    logits = clean.logits.gather(1, slot_pos[..., None].expand(-1, -1, clean.logits.shape[-1]))
    logp = torch.log_softmax(logits.float(), dim=-1)  # [batch slot d_vocab]
    y, w = _targets(logp, options.n_targets, options.targets, generator)  # [batch slot m]
    chosen = logp.gather(-1, y)  # [batch slot m], in the graph
    m_count = y.shape[-1]
    n_experts = model.cfg.n_experts
    inputs = [clean.leaves[layer] for layer in layers]
    per_slot_bytes = m_count * sum(t.numel() for t in inputs) * 4
    slot_chunk = max(1, _GRAD_BUDGET // max(1, per_slot_bytes))
    n_slots = slot_pos.shape[1]
    kl = torch.zeros(n_slots, n_experts, batch, len(layers), dtype=torch.float32, device=ids.device)
    deltas: dict[int, _LayerDelta] = {}  # kept across slot chunks only when there are several
    tol = ROUTING_TOL if options.skip_unchanged else 0.0
    for s0 in range(0, n_slots, slot_chunk):
        slots = list(range(s0, min(s0 + slot_chunk, n_slots)))
        try:
            grads = _gradients(chosen, slot_valid, slots, m_count, inputs, last=slots[-1] == n_slots - 1)
        except _NotInGraph:
            raise _router_error(model) from None
        for li, layer in enumerate(layers):
            g = grads[li]  # [slot m batch pos d_model] (or [... n_experts] for router logits)
            if router:
                if where is not None:
                    g = g * where[None, None, :, :, None].to(g.dtype)
                s = options.delta * g.sum(3).permute(0, 1, 3, 2)  # [slot m n_experts batch]
            else:
                pushed = mask if where is None else mask * where
                delta = deltas.get(layer) or _layer_delta(model, layer, clean.moe_in[layer], mask, options, tol, pushed)
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
    chosen: Tensor, valid: Tensor, slots: list[int], m_count: int, inputs: list[Tensor], last: bool
) -> list[Tensor]:
    """``d log P(y_m) / d input`` for each slot and target: per input ``[slot m *shape]`` fp32.

    Rows of a batch never interact, so one backward pass per (slot, m) serves every row.
    """
    out = [
        torch.zeros(len(slots), m_count, *t.shape, dtype=torch.float32, device=t.device) for t in inputs
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
                store[si, m] = grad.float()
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
