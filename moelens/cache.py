"""ActivationCache: the activations recorded by ``run_with_cache``, with stacked MoE helpers.

Stacked helpers return ``[moe_layer batch pos ...]`` over the model's MoE layers in order
(``model.cfg.moe_layers``), so index 0 is the first MoE layer, not layer 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ._finite import check_metric
from ._residual import ResidualHelpers
from .errors import InvalidInputError, MoelensError, UnknownHookError
from .hook_points import CallContext, HookPoint
from .names import moe_name
from .utils import get_act_name

__all__ = ["ActivationCache", "metric_gradients"]


class ActivationCache(ResidualHelpers, Mapping[str, Tensor]):
    """A read-only mapping ``hook name -> tensor`` plus stacked routing helpers and TransformerLens's
    residual-stream helpers (:mod:`moelens._residual`).

    Keys are hook names, TransformerLens short names (``cache["embed"]``) or ``(short name, layer)``
    pairs, negative layers counting from the end (``cache["resid_post", -1]``,
    ``cache["router_logits", 1]``): see :func:`moelens.utils.get_act_name`.

    Example (``model`` is any :class:`~moelens.HookedMoE`)::

        logits, cache = model.run_with_cache("The cat sat")
        cache["blocks.0.moe.hook_router_logits"]      # [batch pos n_experts]
        cache["resid_post", 0]                        # [batch pos d_model]
        cache.topk_mask()                             # [moe_layer batch pos n_experts], bool
    """

    def __init__(
        self,
        store: dict[str, Tensor],
        moe_layers: tuple[int, ...],
        n_experts: int,
        attention_mask: Tensor,
        model: Any = None,
    ):
        self._store = store
        self.moe_layers = moe_layers
        self.n_experts = n_experts
        self.attention_mask = attention_mask  # [batch pos], bool: False on padding
        self.model = model  # HookedMoE or NNsightMoE: layers, norms and LM head for the residual helpers
        self.has_batch_dim = True

    def __getitem__(self, key: str | tuple) -> Tensor:
        name = self._name(key)
        try:
            return self._store[name]
        except KeyError:
            hint = "" if "hook_" not in name else " (if the name is right, it was not cached: check names_filter)"
            raise UnknownHookError(name + hint, self._store) from None

    def _name(self, key: str | tuple) -> str:
        if isinstance(key, tuple):
            name, layer, *rest = key
            if isinstance(layer, int) and layer < 0 and self.model is not None:
                layer += self.model.cfg.n_layers
            return get_act_name(name, layer, *rest)
        if isinstance(key, str) and key not in self._store and "." not in key and not key.startswith("hook_"):
            return get_act_name(key)
        return key

    def __contains__(self, key: object) -> bool:
        try:
            return self._name(key) in self._store  # type: ignore[arg-type]
        except (MoelensError, TypeError, ValueError):
            return False

    def to(self, device: str | torch.device) -> ActivationCache:
        """Move every tensor (and the mask) to ``device``, in place; returns the cache.

        >>> from moelens import HookedMoE
        >>> from moelens.testing import tiny_model
        >>> _, cache = HookedMoE.from_hf(tiny_model("mixtral")).run_with_cache(torch.tensor([[4, 5]]))
        >>> cache.to("cpu")["embed"].device.type
        'cpu'
        """
        from ._checks import check_device

        check_device(device)
        self._store = {name: tensor.to(device) for name, tensor in self._store.items()}
        self.attention_mask = self.attention_mask.to(device)
        return self

    def remove_batch_dim(self) -> ActivationCache:
        """Drop the batch axis of a one-row cache, in place (TransformerLens's); returns the cache.
        The residual helpers then work on ``[pos d_model]``; the stacked MoE helpers need the batch axis.

        >>> from moelens import HookedMoE
        >>> from moelens.testing import tiny_model
        >>> _, cache = HookedMoE.from_hf(tiny_model("mixtral")).run_with_cache(torch.tensor([[4, 5]]))
        >>> cache.remove_batch_dim()["resid_pre", 0].shape
        torch.Size([2, 32])
        """
        if not self.has_batch_dim:
            return self
        rows = {name: tensor.shape[0] for name, tensor in self._store.items() if tensor.shape[0] != 1}
        if rows:
            name, size = next(iter(rows.items()))
            raise InvalidInputError(f"remove_batch_dim needs a batch of one; {name!r} has {size} rows. Cache one input.")
        self._store = {name: tensor[0] for name, tensor in self._store.items()}
        self.attention_mask = self.attention_mask[0]
        self.has_batch_dim = False
        return self

    def __iter__(self) -> Iterator[str]:
        return iter(self._store)

    def __len__(self) -> int:
        return len(self._store)

    def _repr_html_(self) -> str:  # notebooks: summary table and heatmap
        from moelens.viz.notebook import cache_html

        return cache_html(self)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} activations over MoE layers {list(self.moe_layers)})"

    def _stack(self, suffix: str) -> Tensor:
        return torch.stack([self[moe_name(layer, suffix)] for layer in self.moe_layers])

    def router_logits(self) -> Float[Tensor, "moe_layer batch pos n_experts"]:
        """Raw router logits of every MoE layer."""
        return self._stack("hook_router_logits")

    def router_scores(self) -> Float[Tensor, "moe_layer batch pos n_experts"]:
        """Router scores (softmax/sigmoid before top-k) of every MoE layer."""
        return self._stack("hook_router_scores")

    def topk_indices(self) -> Int[Tensor, "moe_layer batch pos k"]:
        """Experts that actually ran, per slot."""
        return self._stack("hook_topk_indices")

    def topk_weights(self) -> Float[Tensor, "moe_layer batch pos k"]:
        """Weights applied to the selected experts, per slot."""
        return self._stack("hook_topk_weights")

    def topk_mask(self, exclude_padding: bool = False) -> Bool[Tensor, "moe_layer batch pos n_experts"]:
        """Dense boolean mask of the selected experts (order of slots does not matter).

        Padding positions are routed too (the router runs on every position), so by default they
        count as selected; ``exclude_padding=True`` sets them False (``self.attention_mask`` is 0 there).

        >>> import torch
        >>> from moelens import HookedMoE
        >>> from moelens.testing import tiny_model
        >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
        >>> _, cache = model.run_with_cache(torch.tensor([[4, 5, 0]]), attention_mask=torch.tensor([[1, 1, 0]]))
        >>> cache.topk_mask().sum().item(), cache.topk_mask(exclude_padding=True).sum().item()  # 2 layers x top-2
        (12, 8)
        """
        index = self.topk_indices()
        mask = torch.zeros(*index.shape[:-1], self.n_experts, dtype=torch.bool, device=index.device)
        mask.scatter_(-1, index, True)
        if exclude_padding:
            mask &= self.attention_mask.to(mask.device)[None, :, :, None]  # [1 batch pos 1]
        return mask

    def gate_weights(self) -> Float[Tensor, "moe_layer batch pos n_experts"]:
        """Dense applied weights: the top-k weight at selected experts, zero elsewhere."""
        index, weights = self.topk_indices(), self.topk_weights()
        dense = torch.zeros(*index.shape[:-1], self.n_experts, dtype=weights.dtype, device=weights.device)
        return dense.scatter_(-1, index, weights)


def no_op_hook(grad: Tensor, hook: Any) -> None:
    """A backward function that only enters its activation into the autograd graph."""
    return


def metric_gradients(
    output: Tensor, metric: Callable[[Tensor], Tensor] | None, points: list[HookPoint], call: CallContext, device: Any,
    check_finite: bool = True,
) -> dict[str, Tensor]:
    """``"<name>_grad"`` of ``metric(output)`` for each hook point, taken with respect to the activations
    that the call handed to backward functions (``call.grad_targets``); zero where the metric does
    not depend on one. Used by ``HookedMoE.run_with_cache(incl_bwd=True)``."""
    value = output.sum() if metric is None else metric(output)
    if not isinstance(value, Tensor) or value.numel() != 1:
        raise InvalidInputError(
            f"metric must return a scalar tensor; got {getattr(value, 'shape', type(value).__name__)}. "
            "Reduce it, e.g. lambda logits: logits[:, -1, token].sum()."
        )
    if check_finite:
        check_metric(value, metric)
    targets = [call.grad_targets.get(hp.name) for hp in points]
    reached = [t for t in targets if t is not None]
    grads = iter(torch.autograd.grad(value.reshape(()), reached, allow_unused=True) if reached and value.requires_grad else [])
    out = {}
    for hp, target in zip(points, targets, strict=True):
        if target is None:
            continue  # not run in this call (before start_at_layer, after stop_at_layer)
        grad = next(grads, None)
        grad = torch.zeros_like(target) if grad is None else grad
        out[hp.name + "_grad"] = grad.detach().to(device) if device is not None else grad.detach()
    return out
