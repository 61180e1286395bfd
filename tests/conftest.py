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
# Ray reads these once, when it is first imported (ray._private.ray_constants), and any test module may import it
# first (test_cluster_plan does): set here, before every test module, so that a Ray cluster a test starts binds to
# 127.0.0.1 only. Without it, the whole suite's cluster test got a head node on the machine's outside address.
RAY_LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                     "RAY_USAGE_STATS_ENABLED": "0"}
os.environ.update(RAY_LOOPBACK_ONLY)

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


# The longest test files, slowest first (minutes each on the 2-core CI machine). With `-n auto --dist loadfile
# --no-loadscope-reorder` (README) xdist hands out files in collection order: starting these first keeps one worker
# from running a 10-minute file alone at the end while the other has finished.
LONGEST_FILES = ("test_cluster.py", "test_pipeline_e2e.py", "test_cifar.py")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> tuple[int, int]:
        name = item.path.name
        if name in LONGEST_FILES:
            return 0, LONGEST_FILES.index(name)
        return (1, 0) if item.get_closest_marker("slow") else (2, 0)
    items.sort(key=rank)  # stable: the order within each file and rank is kept
