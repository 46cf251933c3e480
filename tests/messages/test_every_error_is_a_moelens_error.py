"""Every error the public API raises on bad input is a MoelensError (and still the builtin a
caller would catch): one list of bad calls, one assertion each."""

import pytest
import torch

from moelens import (
    Ablate,
    DriverEffects,
    Force,
    MoelensError,
    Patch,
    Perturb,
    RoutingStats,
    Scale,
    collect_routing_stats,
    compare_effects,
    driver_effects,
)
from moelens.analysis.plots import plot_cwas_heatmap
from moelens.interventions import from_dict
from moelens.metrics import activation_rate, kl_divergence, topk_mask_from_indices
from moelens.testing import tiny_config

from ..models import wrapped

IDS = torch.tensor([[4, 5, 6]])


def _effects(n_experts=4):
    return DriverEffects(torch.zeros(2, n_experts), (0, 1), n_experts, "exact")


BAD_CALLS = {
    # model inputs and layer ranges
    "no tokenizer": lambda m: m("a text"),
    "token out of vocabulary": lambda m: m(torch.tensor([[1, 200]])),
    "float token ids": lambda m: m(torch.rand(2, 3)),
    "mask shape": lambda m: m(IDS, attention_mask=torch.ones(1, 2)),
    "stop layer": lambda m: m(IDS, stop_at_layer=7),
    "start after stop": lambda m: m(IDS, start_at_layer=1, stop_at_layer=1),
    "residual shape": lambda m: m(torch.zeros(1, 2, 5), start_at_layer=1),
    "empty list": lambda m: m([]),
    "empty mask row": lambda m: m(IDS, attention_mask=torch.tensor([[0, 0, 0]])),
    # hooks
    "unknown hook": lambda m: m.run_with_hooks(IDS, [("blocks.0.moe.hook_router_logit", lambda x, hook: None)]),
    "hook is not callable": lambda m: m.run_with_hooks(IDS, [("blocks.0.moe.hook_out", 3)]),
    "hook returns a wrong shape": lambda m: m.run_with_hooks(IDS, [("blocks.0.moe.hook_out", lambda x, hook: x[:, :1])]),
    "hook returns a non-tensor": lambda m: m.run_with_hooks(IDS, [("blocks.0.moe.hook_out", lambda x, hook: 1.0)]),
    "read-only hook": lambda m: m.run_with_hooks(IDS, [("blocks.0.moe.hook_router_scores", lambda x, hook: x * 2)]),
    "expert index out of range": lambda m: m.run_with_hooks(IDS, [("blocks.0.moe.hook_topk_indices", lambda x, hook: x + 10)]),
    "backward hook without gradient": lambda m: m.run_with_hooks(IDS, bwd_hooks=[("blocks.0.moe.hook_topk_indices", print)]),
    "non-scalar metric": lambda m: m.run_with_cache(IDS, "blocks.0.hook_resid_pre", incl_bwd=True, metric=lambda x: x),
    "neither intervention nor pair": lambda m: m.run_with_interventions(IDS, ["Ablate"]),
    "uncached name": lambda m: m.run_with_cache(IDS, "blocks.0.hook_resid_pre")[1]["blocks.0.moe.hook_out"],
    "moe block of a dense layer": lambda m: m.run_moe_block(5, torch.zeros(1, 2, 32)),
    "route a bad layer": lambda m: m.route(7, torch.zeros(2, 4)),
    "route bad logits": lambda m: m.route(0, torch.zeros(2, 3)),
    "unembed bad residual": lambda m: m.unembed(torch.zeros(2, 5)),
    # interventions
    "perturb sign": lambda m: Perturb(0, 1, sign=2),
    "perturb magnitude": lambda m: Perturb(0, 1, magnitude=float("nan")),
    "scale on": lambda m: Scale(0, 1, on="bias"),
    "ablate mode": lambda m: Ablate(0, 1, mode="half"),
    "layer selector": lambda m: Ablate("some", 1),
    "position selector": lambda m: Force(0, 1, positions=1.5),
    "tensor selector dtype": lambda m: Perturb(0, torch.tensor([0.5])),
    "not an MoE layer": lambda m: m.run_with_interventions(IDS, Ablate(5, 1)),
    "expert out of range": lambda m: m.run_with_interventions(IDS, Ablate(0, 9)),
    "tensor expert out of range": lambda m: m.run_with_interventions(IDS, Perturb(0, torch.tensor([9]))),
    "tensor selector batch": lambda m: m.run_with_interventions(IDS, Perturb(0, torch.tensor([1, 2]))),
    "position outside the sequence": lambda m: m.run_with_interventions(IDS, Scale(0, 1, positions=8)),
    "ablate too many": lambda m: m.run_with_interventions(IDS, Ablate(0, [0, 1, 2])),
    "force too many": lambda m: m.run_with_interventions(IDS, Force(0, [0, 1, 2])),
    "patch name": lambda m: Patch("blocks.0.hook_nothing", torch.zeros(3)),
    "patch broadcast": lambda m: m.run_with_interventions(IDS, Patch("blocks.0.moe.hook_out", torch.zeros(5))),
    "unknown intervention type": lambda m: from_dict({"type": "Shift"}),
    # analyses
    "driver method": lambda m: driver_effects(m, IDS, method="exactly", progress=False),
    "driver layers": lambda m: driver_effects(m, IDS, layers=[5], progress=False),
    "driver perturbation": lambda m: driver_effects(m, IDS, perturbation={"size": 1}, progress=False),
    "driver batch size": lambda m: driver_effects(m, IDS, batch_size=0, progress=False),
    "driver texts": lambda m: driver_effects(m, 3, progress=False),
    "driver under inference_mode": lambda m: _in_inference_mode(lambda: driver_effects(m, IDS, method="first_order", progress=False)),
    "collect empty domains": lambda m: collect_routing_stats(m, {}, progress=False),
    "collect batch size": lambda m: collect_routing_stats(m, {"a": IDS}, batch_size=0, progress=False),
    "collect ids shape": lambda m: collect_routing_stats(m, {"a": IDS[0]}, progress=False),
    "collect texts without tokenizer": lambda m: collect_routing_stats(m, {"a": ["text"]}, progress=False),
    "stats domains": lambda m: RoutingStats(["a", "a"], (0,), 4),
    "stats top_k": lambda m: RoutingStats(["a"], (0,), 4, top_k=9),
    "stats unknown domain": lambda m: RoutingStats(["a"], (0,), 4).accumulate(
        "b", 0, torch.zeros(1, 2, 4, dtype=torch.bool), torch.zeros(1, 2, 4)
    ),
    "stats merge type": lambda m: RoutingStats(["a"], (0,), 4).merge("b"),
    "stats merge model": lambda m: RoutingStats(["a"], (0,), 4).merge(RoutingStats(["a"], (0,), 8)),
    "stats load": lambda m: RoutingStats.load("/no/such/stats"),
    "effects load": lambda m: DriverEffects.load("/no/such/effects"),
    "effects shape": lambda m: DriverEffects(torch.zeros(3), (0,), 3, "exact"),
    "compare types": lambda m: compare_effects(_effects(), "x"),
    "compare models": lambda m: compare_effects(_effects(4), _effects(8)),
    "plot metric": lambda m: plot_cwas_heatmap(RoutingStats(["a"], (0,), 4), metric="cwaz"),
    "plot domain": lambda m: plot_cwas_heatmap(RoutingStats(["a"], (0,), 4), domain="b"),
    # metrics and helpers
    "metric mask shape": lambda m: activation_rate(torch.zeros(2, 3, 4, dtype=torch.bool), torch.ones(2, 2, dtype=torch.bool)),
    "kl reduction": lambda m: kl_divergence(torch.zeros(2, 5), torch.zeros(2, 5), reduction="max"),
    "topk index range": lambda m: topk_mask_from_indices(torch.tensor([[7]]), 4),
    "tiny config family": lambda m: tiny_config("llama"),
}


def _in_inference_mode(fn):
    with torch.inference_mode():
        return fn()


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_input_raises_a_moelens_error(name):
    model = wrapped("mixtral")
    with pytest.raises(Exception) as info:
        BAD_CALLS[name](model)
    assert isinstance(info.value, MoelensError), f"{name}: {type(info.value).__name__}: {info.value}"
    assert str(info.value), name  # a message, not a bare class

