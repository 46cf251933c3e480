"""Streaming routing statistics over datasets: ``collect_routing_stats``.

Hooks on each MoE layer's ``hook_topk_indices`` and ``hook_router_scores`` add every batch straight
into :class:`RoutingStats` running sums, so memory stays flat however many tokens go through; no
activation cache is kept. Texts are sorted by length within a domain (less padding; the sums do not
depend on order), and an optional checkpoint lets an interrupted run resume where it stopped.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Union

import torch
from safetensors.torch import save_file
from torch import Tensor

from ..._tokens import attached_mask
from ...errors import InvalidInputError
from ...inputs import check_max_length
from ...metrics import topk_mask_from_indices
from ...names import moe_name
from ...runner import SweepRunner
from .result import SUM_FIELDS, RoutingStats

if TYPE_CHECKING:
    from ...backends.protocol import MoEBackend

__all__ = ["collect_routing_stats"]

DomainData = Union[Sequence[str], Tensor, tuple[Tensor, Tensor]]


def collect_routing_stats(
    model: MoEBackend,
    domains: Mapping[str, DomainData],
    *,
    batch_size: int = 16,
    max_length: int | None = 256,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    token_records: str | Path | None = None,
) -> RoutingStats:
    """Activation rate, routing entropy and CWAS per (domain, MoE layer, expert) over datasets.

    ``model``: a :class:`~moelens.HookedMoE` or a ``moelens.backends.nnsight.NNsightMoE`` (local or
    remote): one forward per batch, the sums kept here.
    ``domains`` maps a domain name to its texts (a list of str, tokenized with ``model.tokenizer``),
    or to token ids ``[n pos]`` (optionally with an attention mask, as a ``(ids, mask)`` pair), used
    as given. ``max_length`` (default 256, as in :func:`driver_effects`) truncates texts to their
    first ``max_length`` tokens; None keeps them whole. Inputs longer than the model's
    ``max_position_embeddings`` warn. Padding never counts. ``checkpoint`` (a folder) saves the
    running sums after every batch, atomically; rerunning with the same arguments resumes. ``token_records`` (a
    folder) writes one safetensors chunk per batch with, for every real token: domain, text index,
    token id, position, relative position in its text, and the selected experts of every MoE layer.

    >>> from moelens import HookedMoE
    >>> from moelens.testing import tiny_model
    >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
    >>> ids = torch.randint(3, 97, (6, 5), generator=torch.Generator().manual_seed(0))
    >>> stats = collect_routing_stats(model, {"a": ids[:3], "b": ids[3:]}, progress=False)
    >>> stats.cwas().shape  # [domain moe_layer expert]
    torch.Size([2, 2, 4])
    >>> round(float(stats.activation_rate[0, 0].sum()), 6)  # top-2: rates sum to k
    2.0
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f"batch_size={batch_size!r} must be an int >= 1.")
    check_max_length(max_length)
    if not isinstance(domains, Mapping):
        raise InvalidInputError(
            f"domains must be a mapping {{domain_name: texts or token ids}}; got {type(domains).__name__}."
        )
    if not domains:
        raise InvalidInputError("domains is empty; pass {domain_name: texts, ...}.")
    batches = {name: list(_batches(model, name, data, batch_size, max_length)) for name, data in domains.items()}
    stats = RoutingStats.from_config(model.cfg, list(domains))
    todo = [(name, i, batch) for name in batches for i, batch in enumerate(batches[name])]
    run = SweepRunner(
        "collect_routing_stats", len(todo), model=model, checkpoint=checkpoint, file="routing_stats.partial.safetensors",
        fingerprint=None if checkpoint is None else {
            "inputs": _digest(batches), "domains": list(batches), "batch_size": batch_size, "max_length": max_length},
        progress=progress, desc="routing stats",
    )
    _resume(run, stats)
    records_dir = Path(token_records) if token_records is not None else None
    if records_dir is not None:
        if records_dir.exists() and not records_dir.is_dir():
            raise InvalidInputError(f"token_records={str(records_dir)!r} is a file; pass a folder (created if missing) for the per-batch records.")
        records_dir.mkdir(parents=True, exist_ok=True)
    for step in run:
        domain, _, (ids, mask, text_index) = todo[step]
        selected = _run_batch(model, stats, domain, ids, mask)
        if records_dir is not None:
            _write_records(records_dir / f"{step:06d}.safetensors", stats.domains.index(domain), ids, mask, text_index, selected)
        run.save({name: getattr(stats, name) for name in SUM_FIELDS}, step)
    return stats


def _run_batch(model: MoEBackend, stats: RoutingStats, domain: str, ids: Tensor, mask: Tensor) -> list[Tensor]:
    """One forward caching the routing of every MoE layer (scores and top-k indices), added into
    the running sums here: the same code for every backend, and a remote run only sends tensors
    back. Returns each MoE layer's top-k indices [batch pos k] (CPU)."""
    names = [moe_name(layer, s) for layer in model.cfg.moe_layers for s in ("hook_router_scores", "hook_topk_indices")]
    # stop after the last MoE layer: nothing downstream changes the statistics
    stop = model.cfg.moe_layers[-1] + 1
    with torch.inference_mode():
        _, cache = model.run_with_cache(ids, names_filter=names, attention_mask=mask, stop_at_layer=stop)
    selected = []
    for layer in model.cfg.moe_layers:
        index = cache[moe_name(layer, "hook_topk_indices")]  # on this layer's device
        topk = topk_mask_from_indices(index, model.cfg.n_experts)
        stats.accumulate(domain, layer, topk, cache[moe_name(layer, "hook_router_scores")], mask.to(index.device))
        selected.append(index.cpu())
    return selected


def _batches(
    model: MoEBackend, domain: str, data: DomainData, batch_size: int, max_length: int | None
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """(ids [b pos], mask [b pos], text index [b]) batches, texts sorted by length."""
    if isinstance(data, Tensor) or (isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor)):
        if isinstance(data, Tensor):  # ids from to_tokens carry their mask; other ids have no padding
            mask = attached_mask(data)
            ids, mask = data.view_as(data), (mask if mask is not None else torch.ones_like(data))
        else:
            ids, mask = data
        if ids.ndim != 2 or ids.shape[0] == 0:
            raise InvalidInputError(f"token ids of domain {domain!r} must be [n pos] with n >= 1; got {tuple(ids.shape)}.")
        for start in range(0, ids.shape[0], batch_size):
            rows = torch.arange(start, min(start + batch_size, ids.shape[0]))
            yield ids[rows], mask[rows], rows
        return
    if isinstance(data, str) or not isinstance(data, Sequence) or not all(isinstance(t, str) for t in data):
        raise InvalidInputError(
            f"domain {domain!r} must map to a list of texts or a [n pos] tensor of token ids; got {type(data).__name__}."
        )
    if not data:
        raise InvalidInputError(f"domain {domain!r} has no texts.")
    if model.tokenizer is None:
        raise InvalidInputError("this model has no tokenizer: pass token ids per domain, or wrap with a tokenizer.")
    lengths = [len(ids) for ids in model.tokenizer(list(data), truncation=max_length is not None, max_length=max_length)["input_ids"]]
    order = sorted(range(len(data)), key=lambda i: (lengths[i], i))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        encoded = model.tokenizer(
            [data[i] for i in rows], return_tensors="pt", padding=True, truncation=max_length is not None, max_length=max_length
        )
        yield encoded["input_ids"], encoded["attention_mask"], torch.tensor(rows)


def _write_records(path: Path, domain: int, ids: Tensor, mask: Tensor, text_index: Tensor, selected: list[Tensor]) -> None:
    real = mask.bool().cpu()
    positions = real.long().cumsum(-1) - 1  # position among the real tokens of the text
    lengths = real.sum(-1, keepdim=True).expand_as(positions)
    tensors = {
        "domain": torch.full((int(real.sum()),), domain, dtype=torch.int16),
        "text_index": text_index[:, None].expand_as(positions)[real].int(),
        "token_id": ids.cpu()[real].int(),
        "position": positions[real].int(),
        "relative_position": (positions.float() / (lengths - 1).clamp(min=1).float())[real],
        "experts": torch.stack([index[real] for index in selected], dim=1).to(torch.int16),  # [token moe_layer k]
    }
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)


def _digest(batches: dict[str, list]) -> str:
    """SHA-256 over every domain's name and its batches' token ids and masks."""
    digest = hashlib.sha256()
    for name, items in batches.items():
        digest.update(name.encode() + b"\x00")
        for ids, mask, _ in items:
            digest.update(f"{tuple(ids.shape)}".encode())
            digest.update(ids.numpy().tobytes())
            digest.update(mask.numpy().tobytes())
    return digest.hexdigest()


def _resume(run: SweepRunner, stats: RoutingStats) -> None:
    found = run.resume()
    if found is None:
        return
    for name in SUM_FIELDS:
        expected, got = getattr(stats, name), found.get(name)
        if got is None or got.shape != expected.shape or got.dtype != expected.dtype:
            raise run.refuse(f"does not hold the sums of this run ({name})")
        setattr(stats, name, got)
