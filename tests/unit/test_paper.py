"""``python -m moelens.paper --smoke``: the page of verdicts is written, every verdict on it comes
from the numbers of the run, and the verdict rules behave on hand-made inputs."""

from __future__ import annotations

import json

import pytest

from moelens.paper import run_claims, verdict_of
from moelens.paper.__main__ import main
from moelens.paper.claims import SMOKE


def test_verdict_rules():
    assert verdict_of([]) == "undecided"
    assert verdict_of(["holds"] * 3) == "holds"
    assert verdict_of(["holds", "does not hold"]) == "undecided"
    assert verdict_of(["does not hold"]) == "does not hold"


def test_smoke_run_writes_a_page_whose_verdicts_are_the_run(tmp_path):
    page, raw = tmp_path / "claims.md", tmp_path / "claims.json"
    main(["--smoke", "--out", str(page), "--json", str(raw)])
    text = page.read_text()
    data = json.loads(raw.read_text())
    assert text.startswith("# The paper's four claims")
    for key, label in (("domain", "1. domain experts"), ("layers", "2. driver experts"), ("early", "3. early tokens"),
                       ("reweighting", "4. re-weighting")):
        line = next(row for row in text.splitlines() if row.startswith(f"| {label}"))
        assert line.endswith(f"**{data['verdicts'][key]}** |")
    run = data["runs"][0]
    assert run["model"] == "moelens/mixtral-tiny"
    for row in run["domain"] + run["early"]:
        assert row["p_adj"] >= row["p"] - 1e-12 and 0 < row["p"] <= 1  # adjusted never below raw; never exactly 0
    layers = run["layers"]
    assert layers["uniform_share"] == pytest.approx(0.5)  # 4 MoE layers: middle 1..2
    assert layers["lo"] <= layers["excess"] <= layers["hi"]
    # a measurement holds only with an adjusted p below 0.05
    assert all(row["p_adj"] < 0.05 for row in run["domain"] if row["verdict"] == "holds")


def test_run_claims_is_deterministic_for_a_seed():
    a = run_claims(["moelens/mixtral-tiny"], SMOKE, seed=1)
    b = run_claims(["moelens/mixtral-tiny"], SMOKE, seed=1)
    assert a["verdicts"] == b["verdicts"]
    assert a["runs"][0]["layers"]["excess"] == b["runs"][0]["layers"]["excess"]
