"""Token attribution: which earlier tokens made the router score expert ``e`` at one position.

The target is the **router logit** ``z = hook_router_logits[position, expert]`` of MoE layer
``layer`` (before softmax/sigmoid and before any selection bias: the number the family's rule turns
into a choice). The inputs are the input embeddings, i.e. the residual stream entering layer 0
(``blocks.0.hook_resid_pre``, after any embedding multiplier). Three methods:

- ``"gradient"``: gradient x input, ``a_t = (dz / dx_t) . x_t``. Note: in pre-norm models a
  token's embedding reaches its *own* position only through RMSNorm/LayerNorm, which is scale
  invariant, so ``a_t`` at ``t = position`` is close to 0 however much the token matters; the
  method measures the first-order effect of scaling each embedding, which mostly sees what reaches
  the position through attention;
- ``"ablation"``: ``a_t = z - z(x_t replaced by a baseline embedding)``, one forward per token (all
  batched);
- ``"integrated_gradients"``: integrated gradients from the baseline (every token's embedding
  replaced by the baseline) to the input, ``steps`` midpoints; attributions sum to
  ``z(x) - z(baseline)`` up to the Riemann error and to the jumps where an upstream MoE layer's
  top-k selection switches along the path (none for the first MoE layer), and a token's own
  position counts.

``baseline``: ``"mean"`` (mean input embedding over the vocabulary, the default), ``"pad"``/
``"eos"`` (that token's embedding) or a token id. Tokens after ``position`` get exactly 0: the
router at ``position`` cannot see them (causal attention), so the text is cut after ``position``
before anything runs (running them changes the target only by float rounding: batched expert
kernels group tokens differently).

>>> from moelens import HookedMoE
>>> from moelens.testing import tiny_model
>>> model = HookedMoE.from_hf(tiny_model("mixtral"))
>>> att = token_attribution(model, torch.tensor([5, 6, 7, 8]), layer=1, expert=2, position=2, method="ablation")
>>> att.scores.shape, float(att.scores[3])
(torch.Size([4]), 0.0)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from moelens._selectors import resolve_expert, resolve_layer
from moelens.errors import InvalidInputError
from moelens.lazy import pandas as pd
from moelens.names import moe_name
from moelens.results import Result

if TYPE_CHECKING:
    from moelens.model import HookedMoE

__all__ = ["Attribution", "token_attribution"]

METHODS = ("gradient", "ablation", "integrated_gradients")


class Attribution(Result):
    """Per-token attribution ``scores [pos]`` (float64) of the router logit of ``expert`` at MoE
    layer ``layer`` and ``position``; ``target`` is that logit on the input.

    >>> att = Attribution(torch.tensor([4, 5]), ["a", "b"], torch.tensor([0.5, -1.0]), 0, 1, 1, "ablation", 2.0)
    >>> att.top(1)[["position", "token"]].values.tolist()
    [[1, 'b']]
    """

    FORMAT, VERSION = "moelens.Attribution", 1

    def __init__(self, token_ids, tokens, scores, layer, expert, position, method, target, settings=None):
        self.token_ids = token_ids.detach().cpu().long()
        self.tokens = list(tokens)
        self.scores = scores.detach().cpu().double()
        self.layer, self.expert, self.position = int(layer), int(expert), int(position)
        self.method, self.target = method, float(target)
        self.settings = dict(settings or {})

    def to_frame(self) -> pd.DataFrame:
        """``position, token_id, token, attribution``, one row per token."""
        return pd.DataFrame({
            "position": np.arange(len(self.tokens)), "token_id": self.token_ids.numpy(), "token": self.tokens,
            "attribution": self.scores.numpy(),
        })

    def top(self, n: int = 5) -> pd.DataFrame:
        """The ``n`` tokens with the largest absolute attribution."""
        from moelens._checks import check_count

        check_count("n", n, 1)
        frame = self.to_frame()
        return frame.reindex(frame.attribution.abs().sort_values(ascending=False, kind="stable").index).head(n).reset_index(drop=True)

    def _figsize(self) -> tuple[float, float]:
        return (min(max(5.0, 0.35 * len(self.tokens) + 1.5), 22.0), 3.2)

    def _draw(self, ax) -> None:
        """Bar chart of the attribution per token (the target position marked)."""
        n = len(self.tokens)
        colours = ["tab:red" if s > 0 else "tab:blue" for s in self.scores.tolist()]
        ax.bar(range(n), self.scores.numpy(), color=colours)
        ax.axvline(self.position, color="grey", ls="--", lw=1)
        ax.set_xticks(range(n), [repr(t)[1:-1] for t in self.tokens], rotation=90, fontsize=7)
        ax.set_ylabel("attribution")
        ax.set_title(f"router logit of L{self.layer}E{self.expert} at position {self.position} ({self.method})", fontsize=10)

    def _state(self) -> tuple[dict[str, Tensor], dict]:
        meta = {"tokens": self.tokens, "layer": self.layer, "expert": self.expert,
                "position": self.position, "method": self.method, "target": self.target, "settings": self.settings}
        return {"token_ids": self.token_ids, "scores": self.scores}, meta

    @classmethod
    def _from_state(cls, tensors: dict[str, Tensor], m: dict) -> Attribution:
        return cls(tensors["token_ids"], m["tokens"], tensors["scores"], m["layer"], m["expert"], m["position"],
                   m["method"], m["target"], m.get("settings", {}))

    def _html_table(self) -> pd.DataFrame:
        return self.top(5)

    def __repr__(self) -> str:
        best = self.top(1)
        lead = f", top {best.token[0]!r}@{int(best.position[0])}={best.attribution[0]:.3g}" if len(best) else ""
        return f"Attribution({self.method}, L{self.layer}E{self.expert} at position {self.position}, logit {self.target:.3g}{lead})"


# -- computation ------------------------------------------------------------------------------------


def _router_logit(model: HookedMoE, resid: Tensor, layer: int, expert: int, position: int) -> Tensor:
    """Router logit ``[rows]`` of ``expert`` at ``position`` of ``layer``, from the residual stream
    entering layer 0 ``[rows pos d_model]`` (differentiable); the forward stops after ``layer``."""
    seen: dict[str, Tensor] = {}

    def keep(logits: Tensor, hook) -> None:
        seen["z"] = logits[:, position, expert]

    stop = min(layer + 1, model.cfg.n_layers)
    model.run_with_hooks(resid, [(moe_name(layer, "hook_router_logits"), keep)], start_at_layer=0, stop_at_layer=stop)
    return seen["z"]


def _embeddings(model: HookedMoE, ids: Tensor) -> Tensor:
    """Input embeddings (residual stream entering layer 0) of token ids ``[rows pos]``."""
    with torch.no_grad():
        return model(ids.to(model.device), stop_at_layer=0)


def _baseline(model: HookedMoE, baseline: Any) -> Tensor:
    """The baseline embedding ``[d_model]``."""
    if baseline == "mean":
        vocab = torch.arange(model.cfg.d_vocab)
        total = torch.zeros(model.cfg.d_model, dtype=torch.float64, device=model.device)
        for chunk in vocab.split(4096):
            total += _embeddings(model, chunk[:, None])[:, 0].double().sum(0)
        return (total / model.cfg.d_vocab).to(_embeddings(model, vocab[:1, None]).dtype)
    if baseline in ("pad", "eos"):
        tokenizer = model.tokenizer
        token = getattr(tokenizer, f"{baseline}_token_id", None) if tokenizer is not None else None
        if token is None:
            raise InvalidInputError(f"baseline={baseline!r} needs a tokenizer with a {baseline} token; pass baseline='mean' or a token id.")
        baseline = int(token)
    if isinstance(baseline, int) and not isinstance(baseline, bool):
        if not 0 <= baseline < model.cfg.d_vocab:
            raise InvalidInputError(f"baseline token id {baseline} is outside the vocabulary [0, {model.cfg.d_vocab - 1}].")
        return _embeddings(model, torch.tensor([[baseline]]))[0, 0]
    raise InvalidInputError(f"baseline={baseline!r}: pass 'mean', 'pad', 'eos' or a token id.")


def _token_ids(model: HookedMoE, text: Any) -> Tensor:
    if isinstance(text, str):
        return model.to_tokens(text, truncate=False)[0].cpu()
    if isinstance(text, Tensor) and not text.dtype.is_floating_point and (text.ndim == 1 or (text.ndim == 2 and text.shape[0] == 1)):
        return text.reshape(-1).long().cpu()
    raise InvalidInputError(f"text must be one str or the token ids [pos] of one text; got {getattr(text, 'shape', type(text).__name__)}.")


def token_attribution(
    model: HookedMoE,
    text: str | Tensor,
    layer: int,
    expert: int,
    position: int = -1,
    method: str = "gradient",
    *,
    baseline: str | int = "mean",
    steps: int = 32,
) -> Attribution:
    """How much each token at or before ``position`` contributes to the router logit of ``expert``
    at MoE layer ``layer`` and ``position`` (methods and baselines: module docstring).

    >>> from moelens import HookedMoE
    >>> from moelens.testing import tiny_model
    >>> model = HookedMoE.from_hf(tiny_model("deepseek_v3"))  # sigmoid router with a selection bias
    >>> att = token_attribution(model, torch.tensor([5, 6, 7]), layer=1, expert=0, method="integrated_gradients")
    >>> change = att.target - att.settings["baseline_target"]  # completeness, up to the Riemann error
    >>> abs(float(att.scores.sum()) - change) < 0.01 * abs(change)
    True
    """
    if method not in METHODS:
        raise InvalidInputError(f"method={method!r} is not valid; choose one of {', '.join(map(repr, METHODS))}.")
    resolve_layer(model, layer)
    resolve_expert(model, expert)
    ids = _token_ids(model, text)
    n = len(ids)
    if isinstance(position, bool) or not isinstance(position, int) or not -n <= position < n:
        raise InvalidInputError(f"position={position!r} is outside the text's {n} tokens (use -{n}..{n - 1}).")
    position = position % n
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InvalidInputError(f"steps={steps!r} must be a positive int.")
    x = _embeddings(model, ids[None, : position + 1])  # [1 position+1 d_model]: later tokens cannot matter
    n = position + 1
    settings: dict[str, Any] = {"baseline": baseline if method != "gradient" else None}
    with torch.no_grad():
        target = float(_router_logit(model, x, layer, expert, position)[0])
    if method == "gradient":
        with torch.enable_grad():
            leaf = x.detach().clone().requires_grad_(True)
            z = _router_logit(model, leaf, layer, expert, position)
            (grad,) = torch.autograd.grad(z.sum(), leaf)
        scores = (grad[0].double() * x[0].double()).sum(-1)
    elif method == "ablation":
        base = _baseline(model, baseline)
        rows = x.repeat(n, 1, 1)  # [pos pos d_model]: row t has token t replaced
        rows[torch.arange(n), torch.arange(n)] = base.to(x.dtype)
        with torch.no_grad():
            z = _router_logit(model, rows, layer, expert, position)
        scores = target - z.double()
    else:
        base = _baseline(model, baseline).to(x.dtype)
        alphas = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps  # Riemann midpoints
        with torch.enable_grad():
            path = (base + alphas[:, None, None].to(x.device, x.dtype) * (x - base)).detach().requires_grad_(True)
            z = _router_logit(model, path, layer, expert, position)  # [steps]
            (grad,) = torch.autograd.grad(z.sum(), path)
        scores = (grad.double().mean(0) * (x[0] - base).double()).sum(-1)
        with torch.no_grad():
            settings["baseline_target"] = float(_router_logit(model, base.expand_as(x).contiguous(), layer, expert, position)[0])
        settings["steps"] = steps
    scores = torch.cat([scores.cpu(), torch.zeros(len(ids) - n, dtype=torch.float64)])  # exactly 0 after position
    tokens = [model.tokenizer.decode([int(t)]) for t in ids] if model.tokenizer is not None else [f"<{int(t)}>" for t in ids]
    return Attribution(ids, tokens, scores, layer, expert, position, method, target, settings)
