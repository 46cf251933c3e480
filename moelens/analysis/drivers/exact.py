"""The exact sweep of one batch: the KL itself, without ``layers x experts`` full forwards.

One clean forward keeps the residual stream entering every MoE layer; a push at layer ``l`` then
runs layers ``l..end`` only (``start_at_layer``), many (input, expert) pairs stacked along the batch
axis in one forward (``Perturb``'s ``[batch]`` expert selector), short inputs together and trailing
padding dropped. Pairs whose routing does not move at any real token never run (effect 0). With
``positions="last"`` only the last token goes through :meth:`moelens.HookedMoE.unembed` (checked
against the clean logits on every batch, else full logits are used).
"""

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from moelens.inputs import last_token_positions
from moelens.metrics import kl_divergence
from moelens.names import moe_name, resid_name

from .options import SweepOptions
from .positions import at, rows_of
from .routing import ROUTING_TOL, changes

if TYPE_CHECKING:
    from moelens.backends.protocol import MoEBackend as HookedMoE  # either backend
    from moelens.cache import ActivationCache

__all__ = ["exact_batch"]

_ROUTING = ("hook_router_logits", "hook_topk_indices", "hook_topk_weights")


def exact_batch(
    model: "HookedMoE", ids: Tensor, mask: Tensor, options: SweepOptions, tick: Callable[[], Any], where: Tensor | None = None
) -> Tensor:
    """Exact effects ``[batch moe_layer expert]`` (float64, CPU) of one batch, the push applied at
    the tokens of ``where [batch pos]`` (None: every position; :mod:`.positions`).

    >>> from moelens import HookedMoE
    >>> from moelens.testing import tiny_model
    >>> from .options import parse_push
    >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
    >>> options = SweepOptions("exact", parse_push(None), "last", (0, 1))
    >>> ids = torch.tensor([[5, 6, 7]])
    >>> exact_batch(model, ids, torch.ones_like(ids), options, lambda: None).shape
    torch.Size([1, 2, 4])
    """
    batch = ids.shape[0]
    layers = options.layers
    final = model.cfg.n_layers - 1
    # A backend that resumes from the residual stream (HookedMoE) runs layers l..end only; others
    # (nnsight) run full forwards of the same stacked rows (moelens.backends.protocol).
    resume = model.resumes_from_residual
    names = [resid_name(layer, "pre") for layer in layers] + [resid_name(final, "post")] if resume else []
    if options.skip_unchanged:
        names += [moe_name(layer, s) for layer in layers for s in _ROUTING]
    out = torch.zeros(batch, len(layers), model.cfg.n_experts, dtype=torch.float64)
    real = mask.bool()
    last_only = options.positions == "last"
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids, names_filter=names, attention_mask=mask)
        last = last_token_positions(mask)
        rows = torch.arange(batch, device=ids.device)
        head = _last_token_head(model, cache[resid_name(final, "post")], logits, last) if last_only and resume else None
        clean = logits[rows, last] if last_only else logits  # [batch d_vocab] | [batch pos d_vocab]
        for li, layer in enumerate(layers):
            if options.skip_unchanged:
                b, e = _pairs(model, cache, layer, mask if where is None else mask * where, options)
            else:
                b, e = _all_pairs(batch, model.cfg.n_experts, ids.device)
            order = torch.sort(last[b], stable=True).indices  # short inputs together: little padding per chunk
            b, e = b[order], e[order]
            for chunk in _chunks((last[b] + 1).tolist(), options.max_tokens):
                bi, ei = b[chunk], e[chunk]
                # Columns after every row's last real token change nothing before it (causal): drop them.
                width = int(last[bi].max()) + 1
                kwargs: dict[str, Any] = {"attention_mask": mask[bi, :width]}
                if resume:
                    kwargs["start_at_layer"] = layer
                if head is not None:
                    kwargs["stop_at_layer"] = model.cfg.n_layers  # residual entering the final norm
                # [rows width d_model] residual entering the layer, or the rows' token ids
                rows_in = cache[resid_name(layer, "pre")][bi, :width] if resume else ids[bi, :width]
                new = model.run_with_interventions(rows_in, [at(options.push, layer, ei, rows_of(where, bi, width))], **kwargs)
                if last_only:
                    new = new[torch.arange(len(bi), device=new.device), last[bi]]  # [rows d_model|d_vocab]
                    kl = kl_divergence(clean[bi], head(new) if head is not None else new)
                else:
                    keep = real[bi, :width]
                    kl = kl_divergence(clean[bi, :width], new, mask=keep).sum(-1) / keep.sum(-1)
                out[bi.cpu(), li, ei.cpu()] = kl.cpu().double()
            tick()
    return out


def _chunks(widths: list[int], max_tokens: int) -> Iterator[slice]:
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
    model: "HookedMoE", cache: "ActivationCache", layer: int, mask: Tensor, options: SweepOptions
) -> tuple[Tensor, Tensor]:
    """(input, expert) pairs whose push moves the routing of ``layer`` at some real token, from the
    clean router logits alone; the others have effect 0 (up to float32 rounding) and never run."""
    real = mask.bool()
    b_tok = real.nonzero(as_tuple=True)[0]  # [tokens] batch row of each real token
    logits, index, weights = (cache[moe_name(layer, s)][real] for s in _ROUTING)  # [tokens n_experts], [tokens k] x2
    moved = torch.zeros(model.cfg.n_experts, mask.shape[0], device=mask.device)  # [expert batch]
    for experts, changed, _, _ in changes(model, layer, logits, index, weights, options, ROUTING_TOL, 16 * options.max_tokens):
        moved[experts] = torch.zeros(len(experts), mask.shape[0], device=mask.device).index_add_(1, b_tok, changed.float())
    b, e = (moved.T > 0).nonzero(as_tuple=True)  # sorted by input, then expert
    return b, e


def _last_token_head(model: "HookedMoE", final_resid: Tensor, logits: Tensor, last: Tensor) -> Callable | None:
    """:meth:`~moelens.HookedMoE.unembed` for last tokens only, if on these rows it reproduces the
    model's logits (a matmul over fewer rows may round differently; then full logits are used)."""

    def head(x: Tensor) -> Tensor:  # [rows d_model] -> [rows d_vocab], through the [batch pos d] layout
        return model.unembed(x[:, None, :])[:, 0]

    rows = torch.arange(len(last), device=last.device)
    ref = logits[rows, last].detach().float()
    got = head(final_resid[rows, last]).detach().float()
    scale = float(ref.abs().max()) or 1.0
    return head if got.shape == ref.shape and torch.allclose(got, ref, rtol=1e-4, atol=1e-5 * scale) else None
