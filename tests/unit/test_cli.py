"""The moelens command: the default analysis end to end, and one clear line for each bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from moelens.cli import app

runner = CliRunner()


def test_analyze_default_writes_report_and_tables(tmp_path):
    result = runner.invoke(app, ["analyze", "--limit", "4", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "report.html").read_text()
    for section in ("Summary", "Domain experts", "General experts", "Driver experts", "Domain experts vs driver experts", "Tokens by expert",
                    "Token triggers of driver experts", "Mediation through routing", "Driver effects per layer (robust)"):
        assert f"<h2>{section}</h2>" in report
    assert report.count("data:image/png;base64,") >= 7
    assert "early tokens trigger driver experts" in report and "Total effect" in report
    assert "Share of the summed driver effect per layer" in report and "median_share" in report
    domain = pd.read_csv(tmp_path / "domain_experts.csv")
    assert set(domain["domain"]) == {"sentiment", "mmlu", "math"}
    drivers = pd.read_csv(tmp_path / "driver_effects.csv")
    assert len(drivers) == 4 * 8 and (drivers["effect"] >= 0).all()
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["model"] == "moelens/mixtral-tiny" and run["domains"] == {"math": 4, "mmlu": 4, "sentiment": 4}
    # the single steps reuse the folder; report re-assembles it
    again = runner.invoke(app, ["report", str(tmp_path)])
    assert again.exit_code == 0 and "report.html" in again.output
    # a finished run's checkpoints do not block the next run into the same folder with other data
    before = pd.read_csv(tmp_path / "routing_stats.csv")["n_tokens"].sum()
    rerun = runner.invoke(app, ["stats", "--limit", "3", "--out", str(tmp_path)])
    assert rerun.exit_code == 0, rerun.output
    assert pd.read_csv(tmp_path / "routing_stats.csv")["n_tokens"].sum() < before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["analyze", "--model", "moelens/no-such-model"], "is not an installed moelens zoo model"),
        (["analyze", "--data", "sentiment=/no/such/file.jsonl"], "/no/such/file.jsonl does not exist"),
        (["analyze", "--data", "=x"], "write DOMAIN=PATH"),
        (["stats", "--dtype", "float8"], "--dtype 'float8' is not one of"),
        (["report", "/no/such/folder"], "/no/such/folder is not a folder"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message, tmp_path):
    result = runner.invoke(app, [*args] if args[0] == "report" else [*args, "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("moelens: error:") and message in lines[0], result.output
