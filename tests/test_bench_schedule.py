"""bench/schedule.py: the whole-schedule record's arithmetic, on a two-epoch search with a 16-image batch."""
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import schedule  # noqa: E402

from pipeline.kernels import fused  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_whole_schedule_record_adds_up(monkeypatch):
    monkeypatch.setattr(schedule, "relu_step_s", lambda repeats=5: 0.128)  # 1,000 ReLU images per second
    with fused.using("eager"):
        record = schedule.one_search("simple", "drnas", 1, epochs=2, images=128)
    steps, batch = record["iterations_per_epoch"], 64
    assert steps == 128 // batch and record["epochs"] == 2
    assert record["relu_step_s"] == 0.128
    assert record["mean_iteration_ratio"] == pytest.approx(
        sum(record["epoch_iteration_ratios"]) / 2)
    # The whole search's images over its wall time, against 1,000 images/s; slower than its iterations alone.
    assert record["whole_search_ratio"] == pytest.approx(2 * steps * batch / record["wall_s"] / 1000.0)
    assert record["whole_search_ratio"] < 2 * steps * batch / record["parts_s"]["iterations_s"] / 1000.0
    assert sum(record["parts_s"].values()) <= record["wall_s"]
    row = schedule.markdown([record | {"cache": "cold"}])
    assert f"| drnas-simple | cold | {record['wall_s']:.0f} |" in row and math.isfinite(record["first_epoch_s"])
