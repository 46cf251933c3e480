"""Benchmarks run in CI only in smoke mode (tiny sizes), so that they cannot rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("hook_overhead.py", "HookedMoE, full routing cache"),
        ("routing_stats.py", "peak memory ratio 10x data / 1x data"),
        ("interventions.py", "speedup"),
        ("driver_sweep.py", "first-order"),
        ("mediation.py", "speedup batched vs loop"),
        ("peers.py", "identical logits through every variant"),
        ("evaluate_backends.py", "identical predictions through both backends"),
        ("scale.py", "GPU figures unmeasured"),
    ],
)
def test_bench_smoke(script, expected):
    if not (BENCH / script).exists():
        pytest.fail(f"bench/{script} is missing")
    result = subprocess.run([sys.executable, str(BENCH / script), "--smoke"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert expected in result.stdout
