"""Environment for tests and doctests: offline, quiet tokenizers, Agg plots, two CPU threads."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _doctest_torch(doctest_namespace):
    """Doctests may use ``torch`` without importing it (as the modules they document do)."""
    doctest_namespace["torch"] = torch
