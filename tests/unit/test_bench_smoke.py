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
        ("structure.py", "functions_over_60_lines"),
    ],
)
def test_bench_smoke(script, expected):
    if not (BENCH / script).exists():
        pytest.fail(f"bench/{script} is missing")
    result = subprocess.run([sys.executable, str(BENCH / script), "--smoke"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert expected in result.stdout


def test_structure_counts_a_planted_package(tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        from structure import static_counts
    finally:
        sys.path.remove(str(BENCH))
    long_body = "\n".join(f"    x{i} = {i}" for i in range(60))
    (tmp_path / "a.py").write_text(
        f"def long():\n{long_body}\n\n"
        "def wide(self, a, b, c, d, e, f, g, h, i):\n    from . import b\n    from moelens import x\n    import os\n\n"
        "class K:\n    def m(self, a, b, c, d, e, f, g, h):\n        from .c import d\n"
    )
    (tmp_path / "big.py").write_text("x = 1\n" * 401)
    counts = static_counts(tmp_path)
    assert counts == {"modules": 2, "modules_over_400": 1, "functions": 3, "functions_over_60_lines": 1,
                      "functions_over_8_params": 1, "function_level_moelens_imports": 3}
