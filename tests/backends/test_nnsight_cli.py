"""The CLI's --backend option: the same tables through NNsightMoE as through HookedMoE, and one
clear line for what the nnsight backend cannot run."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from moelens.cli import app
from moelens.zoo import ZOO_DIR

from ..tolerance import float_tol

pytest.importorskip("nnsight")
runner = CliRunner()


def test_stats_and_exact_drivers_through_nnsight_equal_hookedmoe(tmp_path):
    for backend in ("hooked", "nnsight"):
        for command in (["stats"], ["drivers", "--exact"]):
            result = runner.invoke(app, [*command, "--limit", "3", "--backend", backend, "--out", str(tmp_path / backend)])
            assert result.exit_code == 0, result.output
    hooked, nnsight = tmp_path / "hooked", tmp_path / "nnsight"
    for table in ("routing_stats.csv", "domain_experts.csv", "driver_effects.csv"):
        a, b = pd.read_csv(hooked / table), pd.read_csv(nnsight / table)
        assert len(a) > 0
        # the same routing: counts, selections and NaNs equal; float sums agree to rounding order (~1e-7)
        if "rank" in a:  # experts of (near) zero effect may swap ranks by rounding; the strong ones may not
            strong = a["rank"] <= 10
            assert a.loc[strong, "rank"].equals(b.loc[strong, "rank"]), table
            a, b = a.drop(columns="rank"), b.drop(columns="rank")
        if table == "driver_effects.csv":
            # A KL is a sum of p * (log p - log q): computed in another order it moves by a few roundings of
            # the log-probabilities, whose p-weighted size is about the entropy, at most ~log(vocab); a
            # share is effect / total effect, so its rounding is that of the effects over the total.
            vocab = json.loads((ZOO_DIR / "mixtral-tiny" / "config.json").read_text())["vocab_size"]
            kl_atol = float_tol(torch.float32, 2 * math.log(vocab), ulps=8)
            total = float(a["effect"].sum())
            assert total > 100 * kl_atol  # effects above rounding: the comparison can fail
            for column, atol in (("effect", kl_atol), ("share", kl_atol * (1 + len(a)) / total), ("std", 2 * kl_atol), ("sem", 2 * kl_atol)):
                if column in a:
                    pd.testing.assert_series_equal(a.pop(column), b.pop(column), check_exact=False, rtol=0, atol=atol, obj=f"{table} {column}")
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=0, atol=1e-5, obj=table)

@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["drivers", "--backend", "nnsight"], "runs the exact driver sweep only"),
        (["stats", "--backend", "vllm"], "--backend 'vllm' is not one of hooked, nnsight, ndif"),
    ],
)
def test_what_the_backend_cannot_do_is_one_line(tmp_path, args, fragment):
    result = runner.invoke(app, [*args, "--limit", "2", "--out", str(tmp_path)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in result.output
