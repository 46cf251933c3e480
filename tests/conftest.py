import os

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
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
