"""Issue #16 item 5: an exception or a KeyboardInterrupt at any point of hook installation or of a
forward leaves no torch hook on any module, and a clean run afterwards is bit-exact."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from moelens import Scale, collect_routing_stats, driver_effects
from moelens.hook_points import HookPoint

from ..models import token_batch, wrapped

IDS = token_batch(0)
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _torch_hooks(model) -> int:
    """Torch hooks of every kind on every module of the wrapped model."""
    return sum(len(getattr(m, name)) for m in model.hf_model.modules() for name in _HOOK_DICTS)


def _user_fns(model) -> int:
    """moelens hook functions still attached to any hook point (none outside a call)."""
    return sum(len(hp.fns) + len(hp.bwd_fns) for hp in model.hook_dict.values())


def _result(value):
    """The tensor that a clean run must reproduce bit for bit."""
    if isinstance(value, tuple):
        value = value[0]
    if hasattr(value, "effect"):  # DriverEffects
        return value.effect
    if hasattr(value, "cwas"):  # RoutingStats
        return torch.cat([value.activation_rate.flatten(), value.cwas().flatten()])
    return value


ENTRY_POINTS = {
    "forward": lambda m: m(IDS),
    "run_with_cache": lambda m: m.run_with_cache(IDS),
    "run_with_hooks": lambda m: m.run_with_hooks(IDS, [("blocks.1.moe.hook_out", lambda x, hook: x * 1.5)]),
    "run_with_interventions": lambda m: m.run_with_interventions(IDS, Scale(0, 1, factor=2.0)),
    "stop_at_layer": lambda m: m(IDS, stop_at_layer=1),
    "collect_routing_stats": lambda m: collect_routing_stats(m, {"a": IDS[:1], "b": IDS[1:]}, batch_size=1, progress=False),
    "driver_effects": lambda m: driver_effects(m, IDS, batch_size=1, skip_unchanged=False, progress=False),
}


@settings(max_examples=15, deadline=None)
@given(entry=st.sampled_from(sorted(ENTRY_POINTS)), at=st.integers(1, 12), kind=st.sampled_from([KeyboardInterrupt, RuntimeError]), after=st.booleans())
def test_interrupt_during_hook_installation_leaves_no_torch_hook(entry, at, kind, after):
    """The ``at``-th torch hook registration raises, before or after the hook is registered (an
    asynchronous interrupt landing just after ``register_forward_hook`` returned)."""
    model = wrapped("mixtral")
    clean = _result(ENTRY_POINTS[entry](model))
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
    assert _torch_hooks(model) == 0 and _user_fns(model) == 0
    assert torch.equal(_result(ENTRY_POINTS[entry](model)), clean)


HOOKED_ENTRY_POINTS = sorted(set(ENTRY_POINTS) - {"forward", "stop_at_layer"})  # those that call hook points


def _count_hook_calls(run) -> int:
    calls = {"n": 0}
    original = HookPoint.__call__

    def counting(self, tensor):
        calls["n"] += 1
        return original(self, tensor)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(HookPoint, "__call__", counting)
        run()
    return calls["n"]


@settings(max_examples=15, deadline=None)
@given(entry=st.sampled_from(HOOKED_ENTRY_POINTS), where=st.floats(0, 1), kind=st.sampled_from([KeyboardInterrupt, RuntimeError]))
def test_interrupt_from_inside_a_hook_leaves_no_hook(entry, where, kind):
    """One hook-point call of the run, chosen anywhere in it (``where``), raises, as a signal handler's
    KeyboardInterrupt would when it lands inside a hook function in the middle of a forward:
    afterwards no torch hook and no hook function remains, and a clean run is bit-exact."""
    model = wrapped("mixtral")
    clean = _result(ENTRY_POINTS[entry](model))
    n_calls = _count_hook_calls(lambda: ENTRY_POINTS[entry](model))
    at = min(n_calls, 1 + int(where * n_calls))
    calls = {"n": 0}
    original = HookPoint.__call__

    def interrupted(self, tensor):
        calls["n"] += 1
        if calls["n"] == at:
            raise kind("interrupted inside a hook")
        return original(self, tensor)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(HookPoint, "__call__", interrupted)
        with pytest.raises(kind, match="interrupted inside a hook"):
            ENTRY_POINTS[entry](model)
    assert _torch_hooks(model) == 0 and _user_fns(model) == 0
    assert torch.equal(_result(ENTRY_POINTS[entry](model)), clean)


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
