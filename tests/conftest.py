import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "true")

SHARED_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.fixture(scope="module")
def shared_archive() -> Path:
    if not SHARED_ARCHIVE.exists():
        pytest.skip(f"the shared CIFAR-10 archive is not at {SHARED_ARCHIVE}")
    return SHARED_ARCHIVE


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the test, restored after it: on a shared 2-core machine two threads per process mostly
    wait on each other, and small-tensor tests run several times faster on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
