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

# The one place every test finds the real CIFAR-10 (shared/data/README.md): through `shared_archive` or
# `shared_archive_or_skip`, never a path of its own.
SHARED_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
# CI sets this (.ci/run): there a missing archive fails the run. Elsewhere its tests are skipped, and CI used to stay
# green with the end-to-end, cluster and real-data tests all skipped.
REQUIRE_DATA_ENV = "ACTSEARCH_REQUIRE_DATA"


def missing_archive_message() -> str:
    return (f"the shared CIFAR-10 archive is not at {SHARED_ARCHIVE}; put it there (shared/data/README.md)"
            f" or unset {REQUIRE_DATA_ENV} to skip the tests that need it")


def pytest_configure(config):
    """With REQUIRE_DATA_ENV=1 a missing archive ends the run before any test, whichever way a test would have
    skipped (test_cluster.py's fixture skips on its own)."""
    if os.environ.get(REQUIRE_DATA_ENV) == "1" and not SHARED_ARCHIVE.exists():
        raise pytest.UsageError(f"{REQUIRE_DATA_ENV}=1: {missing_archive_message()}")


def shared_archive_or_skip() -> Path:
    """The archive's path; skips the calling test where it is absent (a failure with REQUIRE_DATA_ENV=1)."""
    if not SHARED_ARCHIVE.exists():
        if os.environ.get(REQUIRE_DATA_ENV) == "1":
            pytest.fail(f"{REQUIRE_DATA_ENV}=1: {missing_archive_message()}")
        pytest.skip(missing_archive_message())
    return SHARED_ARCHIVE


@pytest.fixture(scope="module")
def shared_archive() -> Path:
    return shared_archive_or_skip()


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
LONGEST_FILES = ("test_cluster.py", "test_pipeline_e2e.py", "test_cifar.py", "test_cluster_faults.py")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> tuple[int, int]:
        name = item.path.name
        if name in LONGEST_FILES:
            return 0, LONGEST_FILES.index(name)
        return (1, 0) if item.get_closest_marker("slow") else (2, 0)
    items.sort(key=rank)  # stable: the order within each file and rank is kept
