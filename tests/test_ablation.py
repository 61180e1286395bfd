"""bench/ablation.py in quick mode on the real CIFAR-10 (the shared archive): every variant x seed gives one row
with the supernet's and the discretized network's accuracy, the gaps, a formula and a retrained accuracy."""
import json

import pytest

from bench import ablation
from pipeline.kernels import fused

pytestmark = pytest.mark.slow


def test_quick_ablation_reports_every_variant_and_seed(shared_archive, tmp_path):
    out = tmp_path / "ablation.json"
    with fused.using("eager"):  # compiling a kernel per candidate set would cost more than these few steps
        records = ablation.main(["--quick", "--device", "cpu", "--source", str(shared_archive), "--cache-dir",
                                 str(tmp_path / "cache"), "--seeds", "1", "--json", str(out), "--markdown",
                                 str(tmp_path / "ablation.md")])
    assert [(r["variant"], r["seed"]) for r in records] == [("relu (reference)", 0), ("drnas", 1), ("grafs", 1)]
    assert json.loads(out.read_text())[1]["formula"] == records[1]["formula"]
    for r in records[1:]:
        assert isinstance(r["discretization_gap_top1"], float)
        assert isinstance(r["discretization_gap_top1_recalibrated"], float)
        assert r["discretized_val_top1"] == r["history"][r["selected_epoch"] - 1]["discretized_val_top1"]
        assert 0.0 <= r["retrained_top1"] <= 100.0 and r["retrain_status"] in ("ok", "failed_to_learn", "diverged")
    grafs = [r for r in records if r["variant"] == "grafs"]
    assert all(r["config"]["start_shrinking"] == 1 and r["config"]["warmstart_epochs"] == 1 for r in grafs)
    assert all(r["selected_epoch"] == 2 for r in records[1:] if r["variant"] == "drnas")  # select: last
    table = (tmp_path / "ablation.md").read_text()
    assert table.count("\n") == 2 + len(records) and "| grafs | 1 |" in table
