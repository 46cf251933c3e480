"""Checkpoints of the two sweeps cannot silently mix: another dtype, seed or model is refused while a
run is unfinished; damage of any kind is refused with the file named; a finished run never blocks the
next call; concurrent writers do not collide; kill -9 and resume give the result of an unbroken run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from moelens import HookedMoE, collect_routing_stats, driver_effects
from moelens.analysis._io import Checkpoint
from moelens.errors import CheckpointError
from moelens.testing import tiny_model

from ..models import wrapped

QUIET = {"progress": False, "batch_size": 2}
FILE = "routing_stats.partial.safetensors"


def data(seed: int = 4) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"a": torch.randint(3, 97, (5, 6), generator=gen), "b": torch.randint(3, 97, (3, 6), generator=gen)}


class Killed(RuntimeError):
    pass


def interrupted(run, monkeypatch) -> None:
    """Run ``run`` until its first checkpoint is written, then fail (an unfinished checkpoint)."""
    save = Checkpoint.save

    def save_then_die(self, *args, **kwargs):
        save(self, *args, **kwargs)
        raise Killed("after the first batch")

    with monkeypatch.context() as patched, pytest.raises(Killed):
        patched.setattr(Checkpoint, "save", save_then_die)
        run()


@pytest.mark.parametrize(
    ("other", "fragment"),
    [
        (lambda: HookedMoE.from_hf(tiny_model("mixtral").to(torch.bfloat16)), "dtype"),
        (lambda: wrapped("mixtral", 1), "another model or other weights"),
        (lambda: wrapped("qwen2_moe"), "architecture"),
    ],
    ids=["dtype", "seed", "model"],
)
def test_unfinished_stats_run_refuses_another_dtype_seed_or_model(tmp_path, monkeypatch, other, fragment):
    model = wrapped("mixtral")
    interrupted(lambda: collect_routing_stats(model, data(), checkpoint=tmp_path, **QUIET), monkeypatch)
    with pytest.raises(CheckpointError, match=fragment) as caught:
        collect_routing_stats(other(), data(), checkpoint=tmp_path, **QUIET)
    assert str(tmp_path / FILE) in str(caught.value) and "Delete it to restart" in str(caught.value)
    # the same model resumes it, to the uninterrupted result
    resumed = collect_routing_stats(model, data(), checkpoint=tmp_path, **QUIET)
    assert torch.equal(resumed.entropy_sums, collect_routing_stats(model, data(), **QUIET).entropy_sums)


def _flip_a_bit_in_tensor_data(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    header = int.from_bytes(raw[:8], "little")
    raw[8 + header + 3] ^= 0x10  # inside the first tensor's bytes
    path.write_bytes(bytes(raw))


def _edit_steps_done(path: Path) -> None:
    with safe_open(str(path), framework="pt") as handle:
        meta = dict(handle.metadata())
    meta["steps_done"] = json.dumps(int(meta["steps_done"]) + 1)
    save_file(load_file(str(path)), str(path), metadata=meta)


DAMAGE = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "is damaged"),
    "garbage": (lambda p: p.write_bytes(os.urandom(300)), "is damaged"),
    "empty": (lambda p: p.write_bytes(b""), "is damaged"),
    "flipped bit": (_flip_a_bit_in_tensor_data, "checksum"),
    "edited steps_done": (_edit_steps_done, "checksum"),
    "a folder": (lambda p: (p.unlink(), p.mkdir()), "is damaged"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
@pytest.mark.parametrize("complete", [False, True], ids=["unfinished", "finished"])
def test_damaged_stats_checkpoint_is_refused_with_the_file_named(tmp_path, monkeypatch, kind, complete):
    model = wrapped("mixtral")
    run = lambda: collect_routing_stats(model, data(), checkpoint=tmp_path, **QUIET)  # noqa: E731
    run() if complete else interrupted(run, monkeypatch)
    damage, fragment = DAMAGE[kind]
    damage(tmp_path / FILE)
    with pytest.raises(CheckpointError, match=fragment) as caught:
        run()
    assert str(tmp_path / FILE) in str(caught.value) and "Delete it to restart" in str(caught.value)


def test_damaged_driver_checkpoint_is_refused(tmp_path):
    model = wrapped("mixtral")
    ids = data()["a"]
    driver_effects(model, ids, checkpoint=tmp_path, **QUIET)
    _flip_a_bit_in_tensor_data(tmp_path / "state.safetensors")
    with pytest.raises(CheckpointError, match="checksum"):
        driver_effects(model, ids, checkpoint=tmp_path, **QUIET)


def test_finished_runs_are_superseded_not_blocking(tmp_path):
    model = wrapped("mixtral")
    collect_routing_stats(model, data(4), checkpoint=tmp_path, **QUIET)
    fresh = collect_routing_stats(model, data(5), checkpoint=tmp_path, **QUIET)  # other inputs
    assert torch.equal(fresh.counts, collect_routing_stats(model, data(5), **QUIET).counts)
    bf16 = HookedMoE.from_hf(tiny_model("mixtral").to(torch.bfloat16))
    again = collect_routing_stats(bf16, data(5), checkpoint=tmp_path, **QUIET)  # other dtype: recomputed
    assert torch.equal(again.score_sums, collect_routing_stats(bf16, data(5), **QUIET).score_sums)
    assert not torch.equal(again.score_sums, fresh.score_sums)
    ids = data()["a"]
    driver_effects(model, ids, checkpoint=tmp_path / "d", **QUIET)
    other = driver_effects(model, ids[:3], checkpoint=tmp_path / "d", **QUIET)
    assert torch.equal(other.effect, driver_effects(model, ids[:3], **QUIET).effect)


def test_concurrent_writers_use_their_own_temporary_files(tmp_path):
    path = tmp_path / "state.safetensors"
    errors = []

    def write(seed: int) -> None:
        try:
            state = Checkpoint(path, {"n": 1}, "demo")
            for step in range(20):
                state.save({"x": torch.full((64,), float(seed))}, step=step)
        except Exception as error:  # pragma: no cover - the failure this test looks for
            errors.append(error)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    tensors, extras = Checkpoint(path, {"n": 1}, "demo").resume()
    assert extras["step"] == 19 and len(set(tensors["x"].tolist())) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fingerprint.json", "state.safetensors"]


_CHILD = """
import os, signal, sys, torch
torch.set_num_threads(int(sys.argv[2]))  # the parent's: the sums must match bit for bit
from moelens import collect_routing_stats
from moelens.analysis._io import Checkpoint
from tests.models import wrapped
from tests.unit.test_checkpoints import data
save, n = Checkpoint.save, [0]
def save_then_kill(self, *args, **kwargs):
    save(self, *args, **kwargs)
    n[0] += 1
    if n[0] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
Checkpoint.save = save_then_kill
collect_routing_stats(wrapped("mixtral"), data(), checkpoint=sys.argv[1], progress=False, batch_size=2)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_kill_9_and_resume_give_the_uninterrupted_result(tmp_path):
    root = Path(__file__).resolve().parents[2]
    child = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path), str(torch.get_num_threads())], cwd=root, capture_output=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    with safe_open(str(tmp_path / FILE), framework="pt") as handle:
        assert json.loads(handle.metadata()["steps_done"]) == 2
    model = wrapped("mixtral")
    resumed = collect_routing_stats(model, data(), checkpoint=tmp_path, **QUIET)
    whole = collect_routing_stats(model, data(), **QUIET)
    for name in ("n_tokens", "counts", "entropy_sums", "score_sums"):
        assert torch.equal(getattr(resumed, name), getattr(whole, name)), name
