"""Issue #16 item 5: an exception or a KeyboardInterrupt at any point of hook installation or of a
forward leaves no torch hook on any module, and a clean run afterwards is bit-exact."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from moelens import Scale

from ..models import token_batch, wrapped

IDS = token_batch(0)


def _torch_hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf_model.modules())


ENTRY_POINTS = {
    "forward": lambda m: m(IDS),
    "run_with_cache": lambda m: m.run_with_cache(IDS),
    "run_with_hooks": lambda m: m.run_with_hooks(IDS, [("blocks.1.moe.hook_out", lambda x, hook: x * 1.5)]),
    "run_with_interventions": lambda m: m.run_with_interventions(IDS, Scale(0, 1, factor=2.0)),
    "stop_at_layer": lambda m: m(IDS, stop_at_layer=1),
}


@settings(max_examples=25, deadline=None)
@given(entry=st.sampled_from(sorted(ENTRY_POINTS)), at=st.integers(1, 12), kind=st.sampled_from([KeyboardInterrupt, RuntimeError]), after=st.booleans())
def test_interrupt_during_hook_installation_leaves_no_torch_hook(entry, at, kind, after):
    """The ``at``-th torch hook registration raises, before or after the hook is registered (an
    asynchronous interrupt landing just after ``register_forward_hook`` returned)."""
    model = wrapped("mixtral")
    clean = ENTRY_POINTS[entry](model)
    clean = clean[0] if isinstance(clean, tuple) else clean
    calls = {"n": 0}
    originals = (nn.Module.register_forward_hook, nn.Module.register_forward_pre_hook)

    def wrap(original):
        def register(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == at and not after:
                raise kind("interrupted before registering")
            handle = original(self, *args, **kwargs)
            if calls["n"] == at:
                raise kind("interrupted after registering")
            return handle

        return register

    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(nn.Module, "register_forward_hook", wrap(originals[0]))
        mp.setattr(nn.Module, "register_forward_pre_hook", wrap(originals[1]))
        try:
            ENTRY_POINTS[entry](model)
        except (KeyboardInterrupt, RuntimeError):
            pass
    finally:
        mp.undo()
    assert _torch_hooks(model) == 0
    again = ENTRY_POINTS[entry](model)
    again = again[0] if isinstance(again, tuple) else again
    assert torch.equal(again, clean)


def test_reset_hooks_removes_a_torch_hook_whose_owner_was_lost():
    from contextlib import ExitStack

    from moelens._interception import own_hook

    model = wrapped("mixtral")
    stack = ExitStack()
    own_hook(stack, model.hf_model.model.layers[0], lambda *a: None)
    stack.pop_all()  # the owner is gone (as if an interrupt skipped its exit)
    assert _torch_hooks(model) == 1
    model.reset_hooks()
    assert _torch_hooks(model) == 0
