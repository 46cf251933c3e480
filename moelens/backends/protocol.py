"""The one protocol the analyses accept: what ``HookedMoE`` and ``NNsightMoE`` both offer.

An analysis written against :class:`MoEBackend` has one code path for both backends. It reads
routing through ``run_with_cache`` (the cached tensors come back to the caller, so the running
sums stay on the client even when the model runs on a remote server), and it perturbs through
``run_with_interventions`` with many targets stacked along the batch (``experts=`` a LongTensor
``[batch]``), so the number of round trips is one per batch, not one per (layer, expert).

``route(layer, logits)`` applies the family's routing rule to given logits (the sweeps use it to
skip pairs whose routing cannot move). ``resumes_from_residual`` says whether ``run_with_interventions`` accepts a residual stream with
``start_at_layer=`` (``HookedMoE``: yes; nnsight: no, every run starts from token ids). A backend
that runs forward passes only says so with ``runs_backward = False`` (``NNsightMoE``); analyses
read it with ``getattr(model, "runs_backward", True)`` and refuse gradient methods up front.

Task evaluation (:func:`moelens.evaluate`) needs only ``tokenizer``, ``device``, ``__call__`` and
``run_with_interventions``: one call per batch of prompts; greedy generation is repeated calls
on the growing batch (no KV cache, so every hook sees the whole sequence). A backend may also
offer ``logits_at(inputs, positions, interventions, attention_mask=)`` (``NNsightMoE`` does), the
logits at ``positions`` ``[batch k]`` only; scoring uses it where present (a remote run then sends
back k positions per row), else slices the full logits.

>>> from moelens import HookedMoE
>>> from moelens.testing import tiny_model
>>> isinstance(HookedMoE.from_hf(tiny_model("mixtral")), MoEBackend)
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from ..cache import ActivationCache
from ..hook_points import NameFilter

__all__ = ["MoEBackend"]


@runtime_checkable
class MoEBackend(Protocol):
    """A wrapped MoE causal LM as the analyses see it (``cfg``, ``spec``, ``tokenizer``, ``device``)."""

    cfg: Any  # moelens.model.MoEConfig
    spec: Any  # moelens.architectures.ArchitectureSpec
    tokenizer: Any
    resumes_from_residual: bool

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def name_or_path(self) -> str: ...

    def to_tokens(
        self, input: Any, prepend_bos: bool | None = None, padding_side: str | None = None, truncate: bool = True,
        move_to_device: bool = True, *,
        max_length: int | None = None, return_mask: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]: ...

    def __call__(self, inputs: Any, *, attention_mask: Tensor | None = None, stop_at_layer: int | None = None) -> Tensor: ...

    def run_with_hooks(
        self,
        inputs: Any,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], Callable]] = (),
        *,
        attention_mask: Tensor | None = None,
        stop_at_layer: int | None = None,
    ) -> Tensor: ...

    def run_with_cache(
        self,
        inputs: Any,
        names_filter: NameFilter = None,
        *,
        device: str | torch.device | None = None,
        attention_mask: Tensor | None = None,
        stop_at_layer: int | None = None,
    ) -> tuple[Tensor, ActivationCache]: ...

    def run_with_interventions(self, inputs: Any, interventions: Any, *, attention_mask: Tensor | None = None) -> Tensor: ...

    def route(self, layer: int, logits: Tensor) -> tuple[Tensor, Tensor]: ...
