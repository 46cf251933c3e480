"""Issue #16, table-driven: bad input -> the expected MoelensError subclass with a message fragment that
names the value or the fix; and a NaN reaching a router is not blamed on an innocent hook."""

from __future__ import annotations

import pytest
import torch

from moelens import Perturb, Scale, collect_routing_stats
from moelens.errors import CheckpointError, InterventionError, InvalidInputError

from ..models import wrapped

IDS = torch.tensor([[4, 5, 6]])

CASES = [
    # (name, call, expected type, message fragment)
    ("empty row of token ids", lambda m: m(torch.zeros(1, 0, dtype=torch.long)), InvalidInputError, "(1, 0) hold no token"),
    ("no rows of token ids", lambda m: m(torch.zeros(0, 3, dtype=torch.long)), InvalidInputError, "(0, 3) hold no token"),
    ("mask given as a list", lambda m: m(IDS, attention_mask=[[1, 1, 1]]), InvalidInputError, "got list"),
    ("fractional mask", lambda m: m(IDS, attention_mask=torch.tensor([[1.0, 0.5, 1.0]])), InvalidInputError, "only 0 (padding) and 1"),
]


@pytest.mark.parametrize(("name", "call", "kind", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_the_expected_error(name, call, kind, fragment):
    with pytest.raises(kind) as info:
        call(wrapped("mixtral"))
    assert fragment in str(info.value), f"{name}: {info.value}"


def test_nan_reaching_a_router_is_not_reported_as_an_in_place_edit():
    model = wrapped("mixtral")
    nan_resid = lambda x, hook: torch.full_like(x, float("nan"))  # noqa: E731
    seen = []
    model.run_with_hooks(
        IDS,
        fwd_hooks=[("blocks.0.hook_resid_pre", nan_resid), ("blocks.0.moe.hook_router_scores", lambda x, hook: seen.append(1))],
    )
    assert seen == [1]


# -- the command line: exit status 2, one line on stderr, no traceback --------------------------------------

CLI_CASES = [
    ("JSONL without text", {"x.jsonl": '{"label": 1}\n'}, ["--data", "d={x.jsonl}"], "has no 'text' field"),
    ("non-string text", {"x.jsonl": '{"text": 3}\n'}, ["--data", "d={x.jsonl}"], "'text' is a int"),
    ("JSON array line", {"x.jsonl": '["a", "b"]\n'}, ["--data", "d={x.jsonl}"], "is a JSON list, not an object"),
    ("MMLU row without choices", {"x.jsonl": '{"text": "q?", "domain": "mmlu"}\n'}, ["--data", "d={x.jsonl}"], "without a 'choices' list"),
    ("--out is a file", {"f": "x"}, ["--out", "{f}"], "is a file, not a folder"),
    ("--out cannot be created", {"f": "x"}, ["--out", "{f}/sub"], "cannot be created"),
    ("two --data for one domain", {}, ["--data", "a=sst2", "--data", "a=mmlu"], "gives domain 'a' twice"),
    ("--model ''", {}, ["--model", ""], "--model '' is empty"),
]


@pytest.mark.parametrize(("name", "files", "args", "fragment"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, name, files, args, fragment):
    from typer.testing import CliRunner

    from moelens.cli import app

    paths = {}
    for file, text in files.items():
        (tmp_path / file).write_text(text)
        paths[file] = str(tmp_path / file)
    for file, path in paths.items():
        args = [a.replace("{" + file + "}", path) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, ["stats", *args])
    assert result.exit_code == 2, f"{name}: {result.output}"
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("moelens: error:") and fragment in lines[0], result.output
    assert "Traceback" not in result.output


def _file(tmp_path):
    (tmp_path / "f").write_text("x")
    return tmp_path / "f"


MORE_CASES = [
    ("slice past the end selects nothing", lambda m, t: m.run_with_interventions(IDS, Scale(0, 1, positions=slice(100, 200))), InterventionError, "selects no position"),
    ("empty position list", lambda m, t: m.run_with_interventions(IDS, Scale(0, 1, positions=[])), InterventionError, "positions=[] selects nothing"),
    ("NaN magnitude", lambda m, t: Perturb(0, 1, magnitude=float("nan")), InterventionError, "magnitude=nan must be a finite"),
    ("max_length=0", lambda m, t: collect_routing_stats(m, {"a": IDS}, max_length=0, progress=False), InvalidInputError, "max_length=0"),
    ("float batch_size", lambda m, t: collect_routing_stats(m, {"a": IDS}, batch_size=2.5, progress=False), InvalidInputError, "batch_size=2.5"),
    ("domains as a list", lambda m, t: collect_routing_stats(m, [IDS], progress=False), InvalidInputError, "got list"),
    ("checkpoint is a file", lambda m, t: collect_routing_stats(m, {"a": IDS}, checkpoint=_file(t), progress=False), CheckpointError, "is a file"),
]


@pytest.mark.parametrize(("name", "call", "kind", "fragment"), MORE_CASES, ids=[c[0] for c in MORE_CASES])
def test_more_bad_input_raises_the_expected_error(tmp_path, name, call, kind, fragment):
    with pytest.raises(kind) as info:
        call(wrapped("mixtral"), tmp_path)
    assert fragment in str(info.value), f"{name}: {info.value}"
