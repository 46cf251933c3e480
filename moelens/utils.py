"""TransformerLens's ``utils`` names that research scripts type: :func:`get_act_name`.

>>> get_act_name("resid_post", 3)
'blocks.3.hook_resid_post'
>>> get_act_name("router_logits", 1)
'blocks.1.moe.hook_router_logits'
"""

from __future__ import annotations

import re

from .errors import InvalidInputError, UnknownHookError
from .names import HOOK_TABLE, hook_name

__all__ = ["get_act_name"]

# TL short name (and moelens' MoE short names) -> moelens hook-table suffix
_SHORT = {
    "embed": "hook_embed",
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
    "normalized": "ln_final.hook_normalized",
    "ln_final": "ln_final.hook_normalized",
    "router_logits": "hook_router_logits",
    "router_scores": "hook_router_scores",
    "topk_indices": "hook_topk_indices",
    "topk_weights": "hook_topk_weights",
    "expert_out": "hook_expert_out",
    "shared_out": "hook_shared_out",
    "moe_in": "hook_in",
    "moe_out": "hook_out",
}
# TL names moelens does not offer, and why (the message says so instead of a bare KeyError)
_NOT_OFFERED = {
    **dict.fromkeys(
        ("q", "k", "v", "z", "rot_q", "rot_k", "result", "pattern", "attn", "attn_scores", "attn_logits",
         "query", "key", "value"),
        "attention internals are not hooked (attention runs in HF's own kernels); use attn_out",
    ),
    **dict.fromkeys(
        ("pre", "post", "mid", "pre_linear", "mlp_pre", "mlp_post", "mlp_mid"),
        "MLP hidden activations are not hooked (experts are fused 3-D kernels); use mlp_out, moe_in or expert_out",
    ),
    "scale": "norm scales are not cached; ActivationCache.apply_ln_to_stack recomputes them from the residual stream",
    "pos_embed": "these families use rotary position embeddings: there is no positional embedding to hook",
}
_COMPACT = re.compile(r"^([a-z_]+?)(\d+)$")  # TL's "resid_pre5" form


def get_act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """The moelens hook name for a TransformerLens short name (``"resid_pre"``, ``"attn_out"``,
    ``"mlp_out"``, ``"embed"``, ``"normalized"``/``"ln_final"``) or an MoE one (``"router_logits"``,
    ``"router_scores"``, ``"topk_indices"``, ``"topk_weights"``, ``"expert_out"``, ``"shared_out"``,
    ``"moe_in"``, ``"moe_out"``), at ``layer``. A full hook name is returned as it is, and
    ``"resid_pre5"`` means ``("resid_pre", 5)`` as in TransformerLens. ``layer_type`` is accepted for
    TransformerLens's signature; moelens names do not need it.

    It does not know the model: an MoE name at a dense layer is refused when it is looked up
    (``cache[...]``, ``model.hook_point``).

    >>> get_act_name("embed"), get_act_name("normalized"), get_act_name("moe_out", 2)
    ('hook_embed', 'ln_final.hook_normalized', 'blocks.2.moe.hook_out')
    >>> get_act_name("pattern", 0)
    Traceback (most recent call last):
    ...
    moelens.errors.InvalidInputError: get_act_name('pattern'): not offered by moelens: attention internals ...
    """
    if not isinstance(name, str):
        raise InvalidInputError(f"get_act_name(name={name!r}): pass a str such as 'resid_post'.")
    if ("." in name or name.startswith("hook_")) and layer is None:
        return name  # already a full hook name
    compact = _COMPACT.match(name)
    if compact is not None and layer is None and compact.group(1) in _SHORT:
        name, layer = compact.group(1), int(compact.group(2))
    if name in _NOT_OFFERED:
        raise InvalidInputError(f"get_act_name({name!r}): not offered by moelens: {_NOT_OFFERED[name]}.")
    suffix = _SHORT.get(name)
    if suffix is None:
        raise UnknownHookError(name, _SHORT)
    scope = HOOK_TABLE[suffix].scope
    if scope == "model":
        if layer is not None:
            raise InvalidInputError(f"get_act_name({name!r}, layer={layer!r}): {name!r} is once per model; drop the layer.")
        return suffix
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise InvalidInputError(
            f"get_act_name({name!r}, layer={layer!r}): {name!r} is per layer; pass a layer index >= 0 "
            "(the cache also takes negative ones: cache[name, -1])."
        )
    return hook_name(layer, suffix)
