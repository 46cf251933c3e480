"""The norms of the registered families as formulas, for ``ActivationCache.apply_ln_to_stack``.

A norm is linear in its input once its scale is fixed: ``norm(x) = w * (x - mean(x)) / scale(x)``
(no centering for RMSNorm), plus a bias for LayerNorm. TransformerLens's ``apply_ln`` applies that
map with the scale of the *cached* residual stream to any stack of components, which is what these
functions do. The steps follow HF's RMSNorm (fp32 statistics, ``rsqrt``, cast back, then the weight),
so applied to the residual stream itself they reproduce the norm's output (to float rounding for
LayerNorm, whose kernel is fused).

>>> import torch
>>> x = torch.randn(2, 3, 8)
>>> inv = inverse_scale(x, "rms", 1e-6)
>>> norm = torch.nn.RMSNorm(8, eps=1e-6)
>>> torch.allclose(apply_norm(x, inv, "rms", norm.weight), norm(x), atol=1e-6)
True
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["apply_norm", "inverse_scale"]


def inverse_scale(reference: Tensor, kind: Literal["rms", "layer"], eps: float) -> Tensor:
    """``1 / scale`` of the residual stream ``reference [... d_model]`` as the norm computes it: ``[... 1]``, fp32."""
    x = reference.float()
    if kind == "layer":
        x = x - x.mean(-1, keepdim=True)
    return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def apply_norm(stack: Tensor, inverse: Tensor, kind: Literal["rms", "layer"], weight: Tensor | None) -> Tensor:
    """The norm with a fixed scale, applied to each component of ``stack [... d_model]`` (no bias:
    a LayerNorm's bias belongs to no component, as in TransformerLens)."""
    x = stack.float()
    if kind == "layer":
        x = x - x.mean(-1, keepdim=True)
    out = (x * inverse).to(stack.dtype)
    return out if weight is None else weight * out
