"""Tolerances that say what the code guarantees.

Two computations of the same value that differ only in the order of floating-point operations (a
different batch layout, another backend, a resumed instead of a full forward, a fused kernel) agree
to a few roundings of the *size of the values they are computed from*, not to a fixed absolute
number: a float32 logit difference of 2.4e-7 is two roundings of a logit of size 1, and a fixed
atol=1e-7 fails on it one run in a few. ``float_tol`` turns "``ulps`` roundings at this size" into an
absolute tolerance. Bit-exact assertions (``torch.equal``) stay for the same computation on the same
batch layout.
"""

from __future__ import annotations

import torch

# Roundings allowed by default: a value computed through a few layers of float32 matmuls, softmaxes and
# reductions whose summation order changed accumulates some tens of ulps at worst in practice; 64
# keeps these tests far from flaky while still failing on any real error (those are orders larger).
ULPS = 64


def float_tol(dtype: torch.dtype, magnitude: float | torch.Tensor, ulps: int = ULPS) -> float:
    """Absolute tolerance: ``ulps`` units of ``dtype``'s machine epsilon at ``magnitude`` (at least 1)."""
    if isinstance(magnitude, torch.Tensor):
        magnitude = float(magnitude.detach().abs().max()) if magnitude.numel() else 0.0
    return ulps * torch.finfo(dtype).eps * max(1.0, abs(magnitude))


def kl_tol(model, ids: torch.Tensor, attention_mask: torch.Tensor | None = None, ulps: int = 8) -> float:
    """Absolute tolerance for a KL divergence of ``model``'s next-token distributions computed in two
    summation orders: a KL is a sum of p * (log p - log q), so each rounding of a log-probability
    moves it by up to eps * max |log p|; ``ulps`` such roundings."""
    with torch.no_grad():
        logits = model(ids, attention_mask=attention_mask)
    log_probs = logits.float().log_softmax(-1)
    if attention_mask is not None:
        log_probs = log_probs[attention_mask.bool()]
    return float_tol(logits.dtype, log_probs, ulps=ulps)
