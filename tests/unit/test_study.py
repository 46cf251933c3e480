"""The re-weighting study end to end on a zoo model (small limits), its overlap guard, its helpers,
and router LoRA (only router adapters train; the loss goes down; adapters save and load)."""

import math

import numpy as np
import pytest
import torch

import moelens
from moelens import HookedMoE, Perturb, Scale, StudyResult, TunedMoE
from moelens.tasks.lora import _examples, _loss, router_parameter_names
from moelens.tasks.study import (
    check_disjoint,
    expert_interventions,
    matched_random_sets,
    study_section,
)

@pytest.fixture(scope="module")
def model():
    return HookedMoE.from_pretrained("moelens/mixtral-tiny", dtype=torch.float32)


@pytest.mark.needs_data("sst2/train.jsonl", "sst2/validation.jsonl")
def test_study_end_to_end(model, tmp_path, data_dir):
    study = moelens.reweighting_study(
        model, "sst2", select_on="train[:12]", evaluate_on="validation[:10]", n_experts=3, n_random=2,
        recipes=("scale-logits", "perturb"), driver_method="first_order", tune_steps=1, progress=False,
    )
    table = study.table
    assert table.iloc[0]["expert_set"] == "baseline" and table.iloc[0]["delta"] == 0.0
    sets = {"domain", "driver", "random (domain)", "random (driver)"}
    for recipe in ("scale-logits", "perturb"):
        part = table[table["recipe"] == recipe]
        assert set(part["expert_set"]) == sets and len(part) == 8  # 4 sets x 2 factors
    assert set(table[table["recipe"] == "perturb"]["factor"]) == {-1.0, 1.0}
    assert (table[table["expert_set"].str.startswith("random")]["draws"] == 2).all()
    assert table.iloc[-1]["expert_set"] == "tune the router"
    rows = table[table["expert_set"] != "baseline"]
    assert (rows["delta_ci_low"] <= rows["delta"] + 1e-12).all() and (rows["delta"] <= rows["delta_ci_high"] + 1e-12).all()
    chosen = table[table["expert_set"].isin(["domain", "driver"])]
    assert chosen["p_vs_random"].between(0, 1).all() and chosen["neg_logit_share"].between(0, 1).all()
    assert len(study.sets["domain"]) == 3 and len(study.sets["random (domain)#1"]) == 3
    # the deltas are the paired differences of the stored per-example results
    base = study.results["baseline"]
    up = study.results["domain|scale-logits|1.2"]
    row = table[(table["expert_set"] == "domain") & (table["recipe"] == "scale-logits") & (table["factor"] == 1.2)].iloc[0]
    assert row["delta"] == pytest.approx(up.accuracy - base.accuracy) and row["accuracy"] == up.accuracy
    again = StudyResult.load(study.save(tmp_path / "study"))
    assert again.sets == study.sets and np.allclose(again.table["delta"], table["delta"])
    assert "<table>" in study_section(study) and "data:image/png" in study_section(study)
    assert repr(study).startswith("StudyResult(moelens/mixtral-tiny on sst2: baseline")


@pytest.mark.needs_data("sst2/train.jsonl", "sst2/validation.jsonl")
def test_overlapping_splits_are_refused(model, data_dir):
    with pytest.raises(moelens.InvalidInputError, match="share 5 id"):
        moelens.reweighting_study(model, "sst2", select_on="validation[:10]", evaluate_on="validation[5:20]", progress=False)
    same_text = [{"id": "other", "dataset": "sst2", "text": "It 's a  charming and often affecting journey .", "label": 1}]
    with pytest.raises(moelens.InvalidInputError, match="share 1 text"):
        moelens.reweighting_study(model, "sst2", select_on=same_text, evaluate_on="validation[:3]", progress=False)


def test_helpers_by_hand():
    check_disjoint([{"id": "a", "text": "x"}], [{"id": "b", "text": "y"}])  # no overlap: no error
    draws = matched_random_sets([(0, 1), (0, 2), (3, 0)], 4, 5, seed=1)
    for draw in draws:
        assert sorted(layer for layer, _ in draw) == [0, 0, 3]  # matched layers
        assert not set(draw) & {(0, 1), (0, 2), (3, 0)}
    with pytest.raises(moelens.InvalidInputError, match="cannot draw"):
        matched_random_sets([(0, 0), (0, 1), (0, 2)], 4, 1)
    assert expert_interventions([(2, 1), (0, 3)], "scale-weights", 0.8) == [
        Scale(0, (3,), factor=0.8, on="weights"), Scale(2, (1,), factor=0.8, on="weights")]
    assert expert_interventions([(1, 2)], "perturb", 0.8, push=2.0) == [Perturb(1, (2,), magnitude=2.0, sign=-1)]
    with pytest.raises(moelens.InvalidInputError, match="recipe"):
        expert_interventions([(1, 2)], "multiply", 1.2)


# -- router LoRA -----------------------------------------------------------------------------------


@pytest.mark.needs_data("sst2/train.jsonl", "sst2/validation.jsonl")
@pytest.mark.parametrize("name", ["moelens/qwen2moe-tiny"])
def test_router_lora_trains_only_the_routers(name, tmp_path, data_dir):
    base = HookedMoE.from_pretrained(name, dtype=torch.float32)
    before = {n: p.detach().clone() for n, p in base.hf_model.named_parameters()}
    names = router_parameter_names(base)
    assert names == [f"model.layers.{i}.mlp.gate.weight" for i in range(4)]  # shared-expert gates left out
    assert len(router_parameter_names(base, include_shared_gate=True)) == 8
    records = moelens.tasks.task_records("sst2", "train[:8]")
    for r in records:  # flipped labels: a loss the routers can lower
        r["label"] = 1 - r["label"]
    tuned = moelens.tune_router(base, "sst2", data=records, steps=8, rank=2, lr=3e-2, batch_size=8, progress=False)
    after = dict(tuned.hf_model.named_parameters())
    adapters = {n for n in after if "lora_" in n}
    assert len(adapters) == 8
    for n, value in before.items():  # every base parameter, routers included, bit-identical; the original untouched
        moved = n.replace(".mlp.gate.weight", ".mlp.gate.base_layer.weight") if n in names else n
        assert torch.equal(after[moved], value), n
    assert all(torch.equal(p, before[n]) for n, p in base.hf_model.named_parameters())
    assert set(after) - {n.replace(".mlp.gate.weight", ".mlp.gate.base_layer.weight") for n in before} == adapters
    batch = _examples(base, moelens.tasks.get_task("sst2"), records, 256)
    with torch.no_grad():
        loss_before, loss_after = float(_loss(base, batch)), float(_loss(tuned, batch))
    assert loss_after < loss_before - 0.05, (loss_before, loss_after)
    assert math.isclose(tuned.losses[0], loss_before, rel_tol=1e-4)
    x = torch.tensor([[1, 5, 6, 7]])
    again = TunedMoE.load_adapter(base, tuned.save_adapter(tmp_path / "adapter"))
    assert torch.equal(again(x), tuned(x)) and not torch.equal(tuned(x), base(x))
    with pytest.raises(moelens.InvalidInputError, match="adapter.json"):
        TunedMoE.load_adapter(base, tmp_path)


@pytest.mark.needs_data("sst2/train.jsonl", "sst2/validation.jsonl")
def test_study_cli_writes_table_plot_and_section(tmp_path, data_dir):
    from typer.testing import CliRunner

    from moelens.cli import app

    args = ["study", "--select-on", "train[:8]", "--evaluate-on", "validation[:6]", "--n-experts", "2", "--n-random", "1",
            "--first-order", "--factor", "1.2", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "study.csv").is_file() and (tmp_path / "study.png").is_file()
    assert "Re-weighting study" in next((tmp_path / "sections").glob("*-re-weighting-study.html")).read_text()
    table = StudyResult.load(tmp_path / "study").table
    assert list(table["expert_set"]) == ["baseline", "domain", "random (domain)", "driver", "random (driver)"]
    bad = CliRunner().invoke(app, ["study", "--select-on", "validation[:4]", "--evaluate-on", "validation[:4]", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "share 4 id" in bad.output


def test_study_plot_is_not_a_pyplot_figure(tmp_path):
    """A figure left in pyplot is shown twice in a notebook (display() and the inline backend at the
    end of the cell): the study's plot is a plain Figure, like the other moelens plots."""
    import matplotlib.pyplot as plt
    import pandas as pd

    table = pd.DataFrame([
        {"expert_set": "baseline", "recipe": "none", "factor": float("nan"), "delta": 0.0, "delta_ci_low": 0.0, "delta_ci_high": 0.0},
        {"expert_set": "domain", "recipe": "scale-logits", "factor": 1.2, "delta": 0.02, "delta_ci_low": -0.01, "delta_ci_high": 0.05}])
    before = plt.get_fignums()
    fig = StudyResult(table, {"model": "m", "task": "sst2"}).plot(tmp_path / "study.png")
    assert plt.get_fignums() == before and (tmp_path / "study.png").stat().st_size > 0 and len(fig.axes) == 1


def test_without_contrast_data_the_demo_texts_stand_in_said_once(tmp_path, monkeypatch):
    from moelens.tasks.demo import demo_texts

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # where `datasets` is installed: no download from the hub either
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from moelens.tasks.study.run import _contrast

    with pytest.warns(UserWarning, match="packaged demo texts of mmlu, math") as record:
        texts = _contrast("sentiment", 5, tmp_path)  # an empty data folder
    assert len(record) == 1
    assert texts == {"mmlu": demo_texts(5)["mmlu"], "math": demo_texts(5)["math"]}
