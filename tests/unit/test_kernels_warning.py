"""The hub-kernels warning fires only when a kernel replaced a forward that moelens hooks depend on."""

from __future__ import annotations

import warnings
from types import MethodType

import pytest
import torch

from moelens import HookedMoE
from moelens.testing import tiny_model
from moelens.zoo import ZOO_MODELS


@pytest.mark.parametrize("name", sorted(ZOO_MODELS))
def test_zoo_models_load_without_any_warning(name):
    """transformers turns use_kernels on when `kernels` is installed; that alone must not warn."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = HookedMoE.from_pretrained(f"moelens/{name}", dtype=torch.float32)
    assert [str(w.message) for w in caught] == []
    assert len(model.hook_names) > 0


def _kernelize(module: torch.nn.Module) -> None:
    """What kernels' ``_replace_forward`` does when a hub kernel exists for a module's layer name."""

    def kernel_forward(self, *args, **kwargs):
        return type(self).forward(self, *args, **kwargs)

    module.forward = MethodType(kernel_forward, module)
    module.__dict__["_kernel_repo"] = "kernels-community/fake"


def test_a_kernel_on_norms_does_not_warn():
    hf = tiny_model("mixtral")
    for layer in hf.model.layers:
        _kernelize(layer.input_layernorm)
    _kernelize(hf.model.norm)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        HookedMoE.from_hf(hf)
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("part", ["mlp", "mlp.gate", "mlp.experts", "self"])
def test_a_kernel_on_a_hooked_module_warns_at_the_users_call(part):
    hf = tiny_model("mixtral")
    layer = hf.model.layers[1]
    _kernelize(layer if part == "self" else layer.get_submodule(part))
    with pytest.warns(UserWarning, match="hub kernels replaced the forward of model.layers.1") as record:
        HookedMoE.from_hf(hf)
    assert [w.filename for w in record] == [__file__]  # stacklevel: this file's call, not moelens' internals
