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
    # one folder, one model and data (#23): the drivers and the summary of the other data are removed, and said so
    assert "removed the drivers, summary outputs" in rerun.output
    assert not (tmp_path / "driver_effects.csv").exists() and not (tmp_path / "run.json").exists()
    again = runner.invoke(app, ["report", str(tmp_path)])
    report = (tmp_path / "report.html").read_text()
    assert again.exit_code == 0 and "<h2>Domain experts</h2>" in report
    assert "<h2>Driver experts</h2>" not in report and "<h2>Summary</h2>" not in report
    same = runner.invoke(app, ["stats", "--limit", "3", "--out", str(tmp_path)])  # the same data again: nothing to remove
    assert same.exit_code == 0 and "removed" not in same.output


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


class _ModelLoaded(Exception):
    pass


@pytest.fixture
def no_model(monkeypatch):
    """Loading the model fails loudly: every argument and file must be checked before it."""
    import moelens.cli as cli

    def load(*args, **kwargs):
        raise _ModelLoaded

    monkeypatch.setattr(cli, "_load_model", load)


def _files(tmp_path):
    (tmp_path / "latin1.jsonl").write_bytes('{"text": "caf\xe9"}\n'.encode("latin-1"))
    (tmp_path / "notext.jsonl").write_text('{"label": 1}\n')
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "two").mkdir()
    for split in ("dev", "test"):
        (tmp_path / "two" / f"{split}.jsonl").write_text('{"text": "x"}\n')


# (args, fragment of the one error line); {t} is the test's folder
BEFORE_THE_MODEL = {
    "study settings": [
        (["study", "--n-random", "-1"], "--n-random -1 must be an int >= 0"),
        (["study", "--tune-steps", "-1"], "--tune-steps -1"),
        (["study", "--n-experts", "0"], "--n-experts 0"),
        (["study", "--factor", "nan"], "--factor nan"),
        (["study", "--factor", "0"], "--factor 0.0"),
        (["study", "--recipe", "rescale"], "--recipe 'rescale'"),
        (["study", "--task", "imdb"], "unknown task 'imdb'"),
        (["study", "--out", "{t}/a-file"], "a-file is a file, not a folder"),
        (["study", "--select-on", "{t}/none.jsonl"], "none.jsonl: no such file"),
        (["study", "--evaluate-on", "{t}/latin1.jsonl"], "latin1.jsonl is not UTF-8"),
    ],
    "data files": [
        (["stats", "--data", "a={t}/latin1.jsonl"], "latin1.jsonl is not UTF-8"),
        (["drivers", "--data", "a={t}/notext.jsonl"], "has no 'text' field"),
        (["analyze", "--data", "a={t}/empty"], "holds no .jsonl file"),
        (["analyze", "--data", "a={t}/two"], "holds splits ['dev', 'test']: name one file"),
        (["stats", "--data", "a=nothere.jsonl"], "'nothere.jsonl' is neither a known dataset"),
    ],
    "model arguments": [
        (["analyze", "--backend", "remote"], "--backend 'remote' is not one of"),
        (["analyze", "--backend", "nnsight"], "add --exact"),
        (["analyze", "--study", "imdb"], "unknown task 'imdb'"),
        (["stats", "--dtype", "float8"], "--dtype 'float8'"),
    ],
    "usage": [
        (["study", "--n-random", "abc"], "Invalid value for '--n-random'"),
        (["stats", "--limit", "0"], "Invalid value for '--limit'"),
        (["stats", "--bogus"], "No such option: --bogus"),
        (["frobnicate"], "No such command 'frobnicate'"),
    ],
}
CASES = [(kind, args, fragment) for kind, cases in BEFORE_THE_MODEL.items() for args, fragment in cases]


@pytest.mark.parametrize(("kind", "args", "fragment"), CASES, ids=[f"{k}: {' '.join(a)}" for k, a, _ in CASES])
def test_bad_arguments_exit_2_with_one_line_before_the_model_loads(no_model, tmp_path, kind, args, fragment):
    _files(tmp_path)
    args = [a.replace("{t}", str(tmp_path)) for a in args]
    if args[0] in ("stats", "drivers", "analyze") and "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    result = runner.invoke(app, args)
    assert not isinstance(result.exception, _ModelLoaded), f"{kind}: the model loaded before {args} was refused"
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("moelens: error:") and fragment in lines[0] and "Traceback" not in result.output, lines[0]


def test_help_version_and_labels_follow_conventions():
    from importlib.metadata import version

    assert runner.invoke(app, ["--version"]).output.strip() == f"moelens {version('moelens')}"
    for command in ("analyze", "stats", "drivers", "study", "report"):
        short, long = runner.invoke(app, [command, "-h"]), runner.invoke(app, [command, "--help"])
        assert short.exit_code == 0 and short.output == long.output
        assert "<bool>" not in short.output and "<list" not in short.output and "<str>" not in short.output, short.output
    assert "--backend" in runner.invoke(app, ["analyze", "-h"]).output
    assert "auto" in runner.invoke(app, ["stats", "-h"]).output  # the Python default dtype, offered and named
