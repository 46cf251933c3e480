"""The study's three-way protocol: select / develop / confirm on disjoint records, multiplicity
correction within each stage, findings only from the confirmation stage after correction."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import moelens
from moelens import HookedMoE, StudyResult
from moelens.tasks.multiplicity import adjust_pvalues
from moelens.tasks.study.protocol import apply_correction

DATA = Path(__file__).parents[2] / ".." / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "sst2" / "train.jsonl").is_file(), reason=f"no shared data at {DATA.resolve()}")


def test_holm_and_bh_against_hand_computation():
    p = [0.001, 0.02, 0.03, 0.5]
    # Holm: sorted p times (m, m-1, ...), running max: 0.004, 0.06, 0.06, 0.5
    assert adjust_pvalues(p, "holm").tolist() == pytest.approx([0.004, 0.06, 0.06, 0.5])
    # BH: p * m / rank, running min from the top: 0.004, 0.04, 0.04, 0.5
    assert adjust_pvalues(p, "bh").tolist() == pytest.approx([0.004, 0.04, 0.04, 0.5])
    assert adjust_pvalues(p, "none").tolist() == p
    rng = np.random.default_rng(0)
    raw = rng.uniform(size=50)
    for method in ("holm", "bh"):
        adj = adjust_pvalues(raw, method)
        assert (adj >= raw - 1e-15).all() and (adj <= 1).all()
        order = np.argsort(raw)
        assert (np.diff(adj[order]) >= -1e-15).all()  # monotone in the raw p-values
    with pytest.raises(moelens.InvalidInputError, match="correction='bonf'"):
        adjust_pvalues(p, "bonf")


def test_correction_is_per_stage_and_only_over_the_selected_sets():
    table = pd.DataFrame({
        "stage": ["develop"] * 4 + ["confirm"] * 4,
        "expert_set": ["baseline", "driver", "random (driver)", "domain"] * 2,
        "p_vs_baseline": [np.nan, 0.01, 0.5, 0.02, np.nan, 0.2, 0.3, 0.01],
        "p_vs_random": [np.nan, 0.02, np.nan, 0.03, np.nan, 0.04, np.nan, 0.001],
    })
    out = apply_correction(table, ["driver", "domain"], "holm", 0.05)
    assert out["p_vs_random_adj"].tolist()[1] == pytest.approx(0.04) and out["p_vs_random_adj"].tolist()[3] == pytest.approx(0.04)
    assert out["p_vs_random_adj"].tolist()[5] == pytest.approx(0.04) and out["p_vs_random_adj"].tolist()[7] == pytest.approx(0.002)
    assert out["beyond_random"].tolist() == [False, True, False, True, False, True, False, True]
    assert np.isnan(out["p_vs_random_adj"][2])  # random rows are not in the family
    findings = StudyResult(out, {}).findings()
    assert set(findings["stage"]) == {"confirm"} and set(findings["expert_set"]) == {"driver", "domain"}


@pytest.fixture(scope="module")
def model():
    return HookedMoE.from_pretrained("moelens/mixtral-tiny", dtype=torch.float32)


@needs_data
def test_three_way_study_end_to_end(model):
    study = moelens.reweighting_study(
        model, "sst2", select_on="train[:8]", evaluate_on="validation[:8]", confirm_on="validation[8:16]", n_experts=2,
        n_random=1, factors=(1.2,), driver_method="first_order", progress=False,
    )
    table = study.table
    assert list(dict.fromkeys(table["stage"])) == ["develop", "confirm"]
    for stage in ("develop", "confirm"):
        part = table[table["stage"] == stage]
        assert part.iloc[0]["expert_set"] == "baseline" and (part["n"] == 8).all()
        chosen = part[part["expert_set"].isin(["domain", "driver"])]
        assert (chosen["p_vs_random_adj"] >= chosen["p_vs_random"] - 1e-12).all()
        assert (chosen["beyond_random"] == (chosen["p_vs_random_adj"] < 0.05)).all()
    assert study.meta["correction"] == "holm" and study.meta["n_confirm"] == 8
    assert study.final_stage == "confirm"
    confirm_base = study.results["confirm|baseline"]
    assert confirm_base.n == 8 and study.results["baseline"].ids != confirm_base.ids
    from moelens.tasks.study.page import study_markdown

    page = study_markdown(study, "the command")
    assert "## What survives" in page and "## Confirm stage" in page and "the command" in page
    survived = study.findings()
    assert ("Nothing: none of the" in page) == survived.empty


@needs_data
def test_confirmation_overlapping_development_is_refused(model):
    with pytest.raises(moelens.InvalidInputError, match="development and confirmation data share 4 id"):
        moelens.reweighting_study(model, "sst2", select_on="train[:8]", evaluate_on="validation[:8]",
                                  confirm_on="validation[4:12]", progress=False)
    with pytest.raises(moelens.InvalidInputError, match="correction='fdr'"):
        moelens.reweighting_study(model, "sst2", select_on="train[:8]", evaluate_on="validation[:8]", correction="fdr",
                                  progress=False)
