"""The analyses take either backend through one protocol, and give the same results."""

from __future__ import annotations

import pytest
import torch

from moelens import collect_routing_stats, driver_effects
from moelens.backends.protocol import MoEBackend

from ..tolerance import float_tol
from .conftest import pair

IDS = torch.randint(3, 97, (6, 7), generator=torch.Generator().manual_seed(5))
MASK = torch.ones_like(IDS)
MASK[1, :3] = 0  # left padding
MASK[4, 5:] = 0  # right padding


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3"])
def test_both_backends_satisfy_the_protocol(family):
    hooked, nns = pair(family)
    assert isinstance(hooked, MoEBackend) and isinstance(nns, MoEBackend)


@pytest.mark.parametrize("family", ["qwen2_moe", "deepseek_v3", "gpt_oss"])
def test_collect_routing_stats_is_the_same_through_both_backends(family):
    hooked, nns = pair(family)
    domains = {"a": (IDS[:3], MASK[:3]), "b": (IDS[3:], MASK[3:])}
    ref = collect_routing_stats(hooked, domains, batch_size=2, progress=False)
    got = collect_routing_stats(nns, domains, batch_size=2, progress=False)
    assert torch.equal(got.n_tokens, ref.n_tokens) and int(ref.n_tokens.sum()) == int(MASK.sum()) * len(hooked.cfg.moe_layers)
    assert torch.equal(got.activation_rate, ref.activation_rate)
    assert torch.equal(got.entropy.nan_to_num(-1.0), ref.entropy.nan_to_num(-1.0))
    assert torch.equal(got.cwas(), ref.cwas())


@pytest.mark.parametrize(("family", "positions"), [("mixtral", "last"), ("olmoe", "all"), ("deepseek_v3", "last")])
def test_exact_driver_effects_are_the_same_through_both_backends(family, positions):
    hooked, nns = pair(family, initializer_range=0.2)  # outputs that depend on the routing: KLs well above rounding
    kwargs = dict(attention_mask=MASK, method="exact", positions=positions, batch_size=4, per_input=True, progress=False,
                  perturbation=(4.0, -1))
    ref = driver_effects(hooked, IDS, **kwargs)
    got = driver_effects(nns, IDS, **kwargs)
    # HookedMoE resumes from the cached residual stream at the perturbed layer and unembeds the last
    # token alone; nnsight runs full forwards: the same arithmetic in another order. A KL is a sum of
    # p * (log p - log q), so one rounding of each log-probability moves it by up to eps * max |log p|:
    # the tolerance is a few roundings of the log-probabilities' size.
    with torch.no_grad():
        log_probs = hooked(IDS, attention_mask=MASK).log_softmax(-1)[MASK.bool()]
    atol = float_tol(hooked.dtype, log_probs, ulps=8)
    assert float(ref.effect.max()) > 1000 * atol  # something moves far above rounding: the comparison can fail
    torch.testing.assert_close(got.per_input, ref.per_input, rtol=1e-4, atol=atol)
    # the same drivers: ranks agree up to ties within the tolerance
    top_ref, top_got = ref.top(5), got.top(5)
    picked = ref.effect[top_got["layer"].map(ref.moe_layers.index).tolist(), top_got["expert"].tolist()]
    torch.testing.assert_close(picked, torch.tensor(top_ref["effect"].tolist(), dtype=picked.dtype), rtol=1e-4, atol=atol)


def test_one_trace_per_batch_and_layer_not_per_expert(monkeypatch):
    import moelens.backends.nnsight as backend

    _, nns = pair("mixtral")
    calls = []
    real = backend._traced
    monkeypatch.setattr(backend, "_traced", lambda *args: calls.append(1) or real(*args))
    driver_effects(nns, IDS[:4], attention_mask=MASK[:4], batch_size=4, skip_unchanged=False, progress=False)
    # one clean trace, then one per MoE layer with all 4 inputs x 4 experts stacked as rows
    assert len(calls) == 1 + len(nns.cfg.moe_layers)
