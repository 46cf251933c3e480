"""The hook-name grammar and the one table of every hook point: shape, writability, scope.

This table drives the hook registration, the cache helpers, the docs and the tests, so adding a
hook point means adding one row here.

>>> HOOK_TABLE["hook_router_logits"].shape
'batch pos n_experts'
>>> resid_name(3, "pre")
'blocks.3.hook_resid_pre'
>>> moe_name(1, "hook_topk_indices")
'blocks.1.moe.hook_topk_indices'
>>> hook_name(2, "hook_attn_out"), hook_name(None, "ln_final.hook_normalized")
('blocks.2.hook_attn_out', 'ln_final.hook_normalized')
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["HookSpec", "HOOK_TABLE", "hook_name", "resid_name", "moe_name", "parse_hook_name"]


@dataclass(frozen=True)
class HookSpec:
    """One row of the hook table."""

    suffix: str
    shape: str  # einops-style axis names, always [batch, pos, ...]
    writable: bool
    # "model": once per model, named by the suffix alone; "layer": every layer; "moe": every MoE layer;
    # "shared": MoE layers with shared experts
    scope: Literal["model", "layer", "moe", "shared"]
    doc: str
    opt_in: bool = False  # computed only when hooked or cached


_ROWS = [
    HookSpec(
        "hook_embed",
        "batch pos d_model",
        True,
        "model",
        "token embeddings: the input embedding's output, before any family scaling (Granite's embedding_multiplier)",
    ),
    HookSpec("hook_resid_pre", "batch pos d_model", True, "layer", "residual stream entering the layer"),
    HookSpec(
        "hook_attn_out",
        "batch pos d_model",
        True,
        "layer",
        "attention output, before it is added to the residual stream (before Granite's residual_multiplier)",
    ),
    HookSpec(
        "hook_resid_mid",
        "batch pos d_model",
        True,
        "layer",
        "residual stream between attention and the MLP/MoE block (the pre-MLP norm's input); "
        "an edit is written into HF's tensor, so the norm and the skip connection both see it",
    ),
    HookSpec(
        "hook_mlp_out",
        "batch pos d_model",
        True,
        "layer",
        "output of the whole MLP or MoE block (shared experts included), on dense layers too",
    ),
    HookSpec("hook_resid_post", "batch pos d_model", True, "layer", "residual stream leaving the layer"),
    HookSpec("hook_in", "batch pos d_model", True, "moe", "input of the MoE block (after the pre-MLP norm)"),
    HookSpec(
        "hook_router_logits",
        "batch pos n_experts",
        True,
        "moe",
        "raw router logits; an edit re-routes by the family's own rule",
    ),
    HookSpec(
        "hook_router_scores",
        "batch pos n_experts",
        False,
        "moe",
        "router scores before top-k (softmax or sigmoid of the logits); read-only",
    ),
    HookSpec("hook_topk_indices", "batch pos k", True, "moe", "selected experts (int64); an edit changes which experts run"),
    HookSpec("hook_topk_weights", "batch pos k", True, "moe", "weights applied to the selected experts' outputs"),
    HookSpec(
        "hook_expert_out",
        "batch pos k d_model",
        True,
        "moe",
        "unweighted output of each selected expert; computed only when hooked or cached",
        opt_in=True,
    ),
    HookSpec("hook_shared_out", "batch pos d_model", True, "shared", "output of the shared expert(s), before any shared gate"),
    HookSpec("hook_out", "batch pos d_model", True, "moe", "output of the MoE block"),
    HookSpec("ln_final.hook_normalized", "batch pos d_model", True, "model", "output of the final norm (weight applied)"),
]

HOOK_TABLE: dict[str, HookSpec] = {row.suffix: row for row in _ROWS}

_NAME_RE = re.compile(r"^blocks\.(\d+)\.(?:(moe)\.)?(hook_\w+)$")


def hook_name(layer: int | None, suffix: str) -> str:
    """The full name of a table row's hook at ``layer`` (None for once-per-model rows)."""
    scope = HOOK_TABLE[suffix].scope
    if scope == "model":
        return suffix
    return f"blocks.{layer}.{suffix}" if scope == "layer" else moe_name(layer, suffix)


def resid_name(layer: int, which: Literal["pre", "mid", "post"]) -> str:
    """Name of the residual-stream hook of a layer."""
    return f"blocks.{layer}.hook_resid_{which}"


def moe_name(layer: int, suffix: str) -> str:
    """Name of an MoE hook of a layer, e.g. ``moe_name(2, "hook_out")``."""
    return f"blocks.{layer}.moe.{suffix}"


def parse_hook_name(name: str) -> tuple[int | None, str] | None:
    """Split a hook name into ``(layer, suffix)``; None if it does not follow the grammar. Once-per-model
    hooks (``hook_embed``, ``ln_final.hook_normalized``) have layer None.

    >>> parse_hook_name("blocks.4.moe.hook_out"), parse_hook_name("hook_embed")
    ((4, 'hook_out'), (None, 'hook_embed'))
    """
    row = HOOK_TABLE.get(name)
    if row is not None and row.scope == "model":
        return None, name
    match = _NAME_RE.match(name)
    if match is None:
        return None
    layer, moe, suffix = match.groups()
    spec = HOOK_TABLE.get(suffix)
    if spec is None or spec.scope == "model" or (spec.scope == "layer") == bool(moe):
        return None
    return int(layer), suffix
