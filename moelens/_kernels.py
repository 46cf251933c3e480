"""Hub kernels (the ``kernels`` package) and moelens hooks: warn only when a kernel hides a hook.

transformers turns ``use_kernels`` on whenever the ``kernels`` package is installed, and its
``kernelize`` swaps the ``forward`` of the modules whose class carries a ``kernel_layer_name``
(``RMSNorm``, ``rotary_pos_emb``, ... for the supported MoE families), when a kernel exists for the
device. A swapped RMSNorm leaves every moelens hook point firing; a swapped MoE block, decoder layer,
router or experts module would not. So the flag alone says nothing: this module inspects what was
actually replaced (``kernels`` sets the instance attribute ``forward`` and records ``_kernel_repo``;
its fallback to the original forward removes both).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterable
from pathlib import Path

from torch import nn

__all__ = ["kernel_replaced_modules", "warn_if_kernels_hide_hooks"]

_PACKAGE = str(Path(__file__).resolve().parent)


def kernel_replaced_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{name: module}`` of the modules whose forward a hub kernel replaced.

    >>> from moelens.testing import tiny_model
    >>> kernel_replaced_modules(tiny_model("mixtral"))  # no kernel on CPU: nothing replaced
    {}
    """
    return {
        name: module
        for name, module in model.named_modules()
        if "_kernel_repo" in module.__dict__ or (hasattr(type(module), "kernel_layer_name") and "forward" in module.__dict__)
    }


def _user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside moelens (the user's call)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level


def warn_if_kernels_hide_hooks(model: nn.Module, hooked: Iterable[nn.Module]) -> None:
    """Warn when a hub kernel replaced the forward of a module moelens hooks (a decoder layer, MoE
    block, router, experts or shared experts) or of a module that contains one: the hooks inside a
    replaced forward never fire. Kernels elsewhere (norms, rotary embeddings) are left alone.

    >>> from moelens.testing import tiny_model
    >>> hf = tiny_model("mixtral")
    >>> warn_if_kernels_hide_hooks(hf, [hf.model.layers[0].mlp])  # nothing replaced: silent
    """
    hooked_ids = {id(module) for module in hooked}
    hidden = [
        name for name, module in kernel_replaced_modules(model).items()
        if any(id(sub) in hooked_ids for sub in module.modules())
    ]
    if hidden:
        warnings.warn(
            f"hub kernels replaced the forward of {', '.join(hidden[:4])}{' ...' if len(hidden) > 4 else ''}, which "
            f"moelens hooks (or which contains hooked modules): hook points inside it may never fire. Load the model "
            f"with use_kernels=False (or set USE_HUB_KERNELS=0).",
            stacklevel=_user_stacklevel(),
        )
