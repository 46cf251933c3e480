import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings

# Under pytest-xdist (README runs `-n 2` on 2 cores) each worker gets one intra-op thread, and the
# subprocesses it starts (docs build kernels, bench smoke runs) inherit one: two workers with two
# threads each oversubscribed the cores and made some tests 20x slower under load.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    torch.set_num_threads(1)

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=15, deadline=None)
# "ci" is derandomized (the same examples on every run, so --hypothesis-seed changes nothing); "seeded"
# draws fresh examples, from --hypothesis-seed when given: HYPOTHESIS_PROFILE=seeded pytest --hypothesis-seed=7
settings.register_profile("seeded", max_examples=25, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# -- real evaluation data ---------------------------------------------------------------------------
# The evaluation sets live outside the repository (../shared/data beside the checkout, or wherever
# MOELENS_DATA_DIR points); a user's fresh clone has none. Tests that need them say so with one marker,
# `@pytest.mark.needs_data` (optionally naming files: `needs_data("sst2/train.jsonl")`), or take the
# `data_dir` fixture; either skips with a one-line reason when the data is not found.
ROOT = Path(__file__).resolve().parents[1]


def find_data_dir() -> Path | None:
    """``$MOELENS_DATA_DIR`` if set, else ``../shared/data`` beside the repository, if it is a folder."""
    env = os.environ.get("MOELENS_DATA_DIR")
    folder = Path(env) if env else ROOT.parent / "shared" / "data"
    return folder if folder.is_dir() else None


def _missing_data(files: tuple[str, ...]) -> str | None:
    """Why the data cannot be used (one line), or None when it can."""
    folder = find_data_dir()
    if folder is None:
        env = os.environ.get("MOELENS_DATA_DIR")
        where = f"MOELENS_DATA_DIR={env} is not a folder" if env else "no MOELENS_DATA_DIR and no ../shared/data beside the repository"
        return f"needs the evaluation data: {where}"
    missing = [f for f in files if not (folder / f).is_file()]
    return f"needs the evaluation data: {folder} lacks {', '.join(missing)}" if missing else None


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_data(*files): needs the evaluation data folder (skips without it)")


def pytest_runtest_setup(item):
    marker = item.get_closest_marker("needs_data")
    if marker is not None and (reason := _missing_data(tuple(marker.args))):
        pytest.skip(reason)


@pytest.fixture
def data_dir(request) -> Path:
    """The evaluation data folder (the test skips when there is none). The library's own lookup
    (``moelens.tasks.data.resolve_data_dir``) sees the same folder through ``MOELENS_DATA_DIR``."""
    marker = request.node.get_closest_marker("needs_data")
    if reason := _missing_data(tuple(marker.args) if marker else ()):
        pytest.skip(reason)
    folder = find_data_dir()
    monkeypatch = request.getfixturevalue("monkeypatch")
    monkeypatch.setenv("MOELENS_DATA_DIR", str(folder))
    return folder
