"""Environment for tests and doctests: offline, quiet tokenizers, Agg plots, two CPU threads."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402
from jaxtyping import install_import_hook  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

# The jaxtyping annotations of the public core are checked while the tests run (types and shapes,
# through beartype): modules listed here are instrumented when they are first imported, which is
# after this file. A call with a wrong dtype or inconsistent shapes raises jaxtyping.TypeCheckError.
# moelens.metrics is not listed: it validates its inputs itself, with messages that name the fix
# (tests/unit/test_metrics_reference.py checks them), which the checker would pre-empt.
CHECKED_MODULES = [
    "moelens.cache",
    "moelens.analysis.routing_stats.result",
    "moelens.analysis.drivers.result",
]
install_import_hook(CHECKED_MODULES, "beartype.beartype")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _doctest_torch(doctest_namespace):
    """Doctests may use ``torch`` without importing it (as the modules they document do)."""
    doctest_namespace["torch"] = torch
