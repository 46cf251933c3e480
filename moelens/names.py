"""The hook-name grammar and the one table of every hook point: shape, writability, scope.

This table drives the hook registration, the cache helpers, the docs and the tests, so adding a
hook point means adding one row here.

>>> HOOK_TABLE["hook_router_logits"].shape
'batch pos n_experts'
>>> resid_name(3, "pre")
'blocks.3.hook_resid_pre'
>>> moe_name(1, "hook_topk_indices")
'blocks.1.moe.hook_topk_indices'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["HookSpec", "HOOK_TABLE", "resid_name", "moe_name", "parse_hook_name"]


@dataclass(frozen=True)
class HookSpec:
    """One row of the hook table."""

    suffix: str
    shape: str  # einops-style axis names, always [batch, pos, ...]
    writable: bool
    scope: Literal["layer", "moe", "shared"]  # every layer / every MoE layer / MoE layers with shared experts
    doc: str
    opt_in: bool = False  # computed only when hooked or cached


_ROWS = [
    HookSpec("hook_resid_pre", "batch pos d_model", True, "layer", "residual stream entering the layer"),
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
]

HOOK_TABLE: dict[str, HookSpec] = {row.suffix: row for row in _ROWS}

_NAME_RE = re.compile(r"^blocks\.(\d+)\.(?:(moe)\.)?(hook_\w+)$")


def resid_name(layer: int, which: Literal["pre", "post"]) -> str:
    """Name of the residual-stream hook of a layer."""
    return f"blocks.{layer}.hook_resid_{which}"


def moe_name(layer: int, suffix: str) -> str:
    """Name of an MoE hook of a layer, e.g. ``moe_name(2, "hook_out")``."""
    return f"blocks.{layer}.moe.{suffix}"


def parse_hook_name(name: str) -> tuple[int, str] | None:
    """Split a hook name into ``(layer, suffix)``; None if it does not follow the grammar.

    >>> parse_hook_name("blocks.4.moe.hook_out")
    (4, 'hook_out')
    """
    match = _NAME_RE.match(name)
    if match is None:
        return None
    layer, moe, suffix = match.groups()
    spec = HOOK_TABLE.get(suffix)
    if spec is None or (spec.scope == "layer") == bool(moe):
        return None
    return int(layer), suffix
