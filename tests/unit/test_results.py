"""Every result class subclasses one base and keeps its promises: save/load gives back the same state
(bit for bit), _repr_html_ shows it, plot() returns a Figure without touching pyplot's global state,
plot(ax=...) draws on the caller's axes, and the repr is one short line."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

import moelens
from moelens import HookedMoE, token_triggers
from moelens.analysis.agreement import Agreement, compare_effects
from moelens.analysis.attribution import Attribution
from moelens.analysis.drivers import DriverEffects, PositionEffects
from moelens.analysis.mediation import Mediation
from moelens.analysis.representations import ExpertRepresentations
from moelens.analysis.routing_stats import RoutingStats
from moelens.analysis.triggers import EarlyLate, TokenTriggers
from moelens.metrics import topk_mask_from_indices
from moelens.patching import PatchingResult
from moelens.results import Result, same_state
from moelens.tasks import EvalResult, StudyResult
from moelens.testing import tiny_model


def _stats() -> RoutingStats:
    stats = RoutingStats(["a", "b"], moe_layers=(0, 1), n_experts=4, top_k=1)
    gen = torch.Generator().manual_seed(0)
    for d in ("a", "b"):
        topk = topk_mask_from_indices(torch.randint(0, 4, (2, 3, 1), generator=gen), 4)  # [batch pos n_experts]
        stats.accumulate_layers(d, topk.expand(2, 2, 3, 4), torch.rand(2, 2, 3, 4, generator=gen))
    return stats


def _effects(method: str = "exact", seed: int = 0) -> DriverEffects:
    gen = torch.Generator().manual_seed(seed)
    return DriverEffects(torch.rand(2, 4, generator=gen, dtype=torch.float64), (0, 1), 4, method,
                         {"magnitude": 1.0, "sign": -1, "n_inputs": 3}, torch.rand(3, 2, 4, generator=gen, dtype=torch.float64))


def _eval(task: str = "sst2", groups: bool = False) -> EvalResult:
    return EvalResult(task, ["a", "b", "c"], [1, 0, 1], [1, 1, 1], np.array([True, False, True]),
                      torch.tensor([[0.5, -1.0], [0.25, 2.0], [1.0, 0.0]]), None,
                      ["x", "y", "x"] if groups else None, [{"kind": "Scale", "factor": 1.2}])


def _triggers() -> TokenTriggers:
    model = HookedMoE.from_hf(tiny_model("mixtral"))
    ids = torch.randint(3, 97, (6, 20), generator=torch.Generator().manual_seed(1))
    return token_triggers(model, ids, [(1, 0), (1, 3)], progress=False)


def _study() -> StudyResult:
    table = pd.DataFrame([
        {"expert_set": "baseline", "recipe": "none", "factor": float("nan"), "accuracy": 0.5, "delta": 0.0,
         "delta_ci_low": 0.0, "delta_ci_high": 0.0},
        {"expert_set": "domain", "recipe": "scale-logits", "factor": 1.2, "accuracy": 0.7, "delta": 0.2,
         "delta_ci_low": -0.1, "delta_ci_high": 0.4},
    ])
    return StudyResult(table, {"model": "m", "task": "sst2"}, {"domain": [(0, 1), (1, 2)]},
                       {"baseline": _eval(), "domain|scale-logits|1.2": _eval(groups=True)})


MAKERS = {
    RoutingStats: _stats,
    DriverEffects: _effects,
    Mediation: lambda: Mediation(torch.tensor([1.0, 0.5]), torch.tensor([0.75, 0.25]), torch.rand(2, 2, 4),
                                 torch.rand(2, 2), torch.tensor([[[0.5, float("nan")], [0.1, 0.2]]] * 2), (0, 1), 4, {"metric": "kl"}),
    Attribution: lambda: Attribution(torch.tensor([4, 5, 6]), ["a", "b", "c"], torch.tensor([0.5, -1.0, 0.25]), 1, 2, 2,
                                     "ablation", 2.0, {"steps": 3}),
    TokenTriggers: _triggers,
    EarlyLate: lambda: _triggers().early_vs_late(n_boot=50),
    ExpertRepresentations: lambda: ExpertRepresentations(torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(0)),
                                                         torch.ones(2, 2, 4), ["d", "e"], (0, 1), {"n_tokens": 5}),
    Agreement: lambda: compare_effects(_effects("exact", 0), _effects("first_order", 1), n=3),
    EvalResult: _eval,
    StudyResult: _study,
    PositionEffects: lambda: PositionEffects(torch.rand(3, 2, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64),
                                             ["0", "1", "2"], (0, 1), torch.tensor([4, 4, 3]), {"groups": {"0": "0"}}),
    PatchingResult: lambda: PatchingResult(torch.tensor([[0.0, 1.0, 0.5], [2.0, 3.0, -1.0]]), (0, 1), "pos",
                                           {"patched": "resid_pre", "metric": "logit_diff", "clean_metric": 3.0, "corrupted_metric": 0.0}),
}


def _all_subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub} | _all_subclasses(sub)
    return out


def test_every_result_class_of_the_package_is_covered_here():
    assert moelens  # every module that defines a result is imported above
    package = {c for c in _all_subclasses(Result) if c.__module__.startswith("moelens.") and not c.FORMAT.startswith("demo.")}
    assert package == set(MAKERS), package ^ set(MAKERS)
    assert all(c.FORMAT.startswith("moelens.") for c in package) and len({c.FORMAT for c in package}) == len(package)


@pytest.mark.parametrize("cls", list(MAKERS), ids=lambda c: c.__name__)
def test_save_load_round_trip_is_exact(cls, tmp_path):
    result = MAKERS[cls]()
    written = result.save(tmp_path / "sub" / "result")
    assert written.name == "result.safetensors" and (tmp_path / "sub" / "result.json").is_file()
    again = cls.load(tmp_path / "sub" / "result")
    assert type(again) is cls and same_state(again, result)
    assert repr(again) == repr(result)
    pd.testing.assert_frame_equal(again.to_frame(), result.to_frame())


@pytest.mark.parametrize("cls", list(MAKERS), ids=lambda c: c.__name__)
def test_views_html_plot_and_repr(cls, tmp_path):
    result = MAKERS[cls]()
    page = result._repr_html_()
    assert "moelens-repr" in page and cls.__name__ in page and "<table" in page
    before = plt.get_fignums()
    fig = result.plot()
    assert isinstance(fig, Figure) and fig.axes and plt.get_fignums() == before
    own = Figure()
    ax = own.add_subplot()
    assert result.plot(ax=ax) is own and ax.has_data() and plt.get_fignums() == before
    result.plot(path=tmp_path / "x.png")
    assert (tmp_path / "x.png").stat().st_size > 0
    text = repr(result)
    assert text.startswith(cls.__name__ + "(") and "\n" not in text and len(text) < 400


def test_a_file_of_another_class_is_refused(tmp_path):
    from moelens.errors import ResultFileError

    _effects().save(tmp_path / "x")
    with pytest.raises(ResultFileError, match="moelens.Mediation"):
        Mediation.load(tmp_path / "x")


def test_old_plot_names_are_aliases():
    effects, stats = _effects(), _stats()
    assert len(effects.plot_heatmap().axes) == len(effects.plot().axes)
    assert effects.plot_layer_totals().axes[0].get_title() == effects.plot(view="layer_totals").axes[0].get_title()
    from moelens.analysis.plots import plot_cwas_heatmap

    assert len(plot_cwas_heatmap(stats).axes) == len(stats.plot().axes)
