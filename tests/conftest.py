import os

# One compute thread per process (and per subprocess, which inherits it): the suite runs
# several processes at once (pytest-xdist, Ray trials), and torch threads that outnumber the
# cores wait on each other. Tests that time or compare thread counts set them explicitly.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
