"""bench/throughput.py: a tiny end-to-end run (eager cells: a batch under the compile threshold) and its parts."""
import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import throughput  # noqa: E402
from bench import measure  # noqa: E402  (throughput put the project root on the path)

pytestmark = pytest.mark.slow  # about 13 s: kernel compilation and a benchmark run


def test_quick_run_writes_a_record_per_variant(tmp_path, capsys):
    out, table = tmp_path / "bench.json", tmp_path / "bench.md"
    records = throughput.main(["--quick", "--batch", "8", "--steps", "1", "--threads", "1", "--json", str(out),
                               "--markdown", str(table)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(records))
    assert not [r for r in records if "error" in r]
    steps = {r["variant"]: r for r in records if r["kind"] == "train_step"}
    expected = {"relu", "swish", *(f"genotype {g}" for g in throughput.GENOTYPES), *throughput.SUPERNETS}
    assert set(steps) == expected
    for r in steps.values():
        assert r["network"] == "resnet8" and r["images_per_s"] > 0 and r["ratio_to_relu"] > 0
        assert r["peak_mem_mb"] > 0 and math.isfinite(r["mem_ratio_to_relu"])
        # The ratio is to the ReLU step timed next to it, not to the relu row's own time.
        assert r["ratio_to_relu"] == pytest.approx(r["relu_step_ms"] / r["step_ms"])
    searches = {r["variant"] for r in records if r["kind"] == "search_iteration"}
    shrunk = {f"{v} ({p}% dropped)" for v in throughput.SHRUNK_VARIANTS for p in (50, 90)}
    assert searches == set(throughput.SUPERNETS) | shrunk
    loading = [r for r in records if r["kind"] == "data_loading"]
    assert len(loading) == 1 and 0 < loading[0]["share_of_step_resnet8"] < 1
    rows = table.read_text().splitlines()[2:]
    assert len(rows) == len(steps) + len(searches)  # one per step and search record; loading is in the text
    assert rows[0].startswith("| resnet8 | 1 | relu | ") and "darts-simple (search iteration)" in "".join(rows)
    printed = capsys.readouterr().out
    assert "targets (x ReLU, same run):" in printed and "full protocol estimate" in printed


def test_persistent_memory_counts_weights_gradients_and_optimizer_state():
    model = torch.nn.Linear(10, 10)  # 110 parameters
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    assert measure._persistent_mb(model, opt) == pytest.approx(110 * 4 / 2**20)
    model(torch.ones(2, 10)).sum().backward()
    opt.step()  # gradients and momentum buffers now exist
    assert measure._persistent_mb(model, opt) == pytest.approx(3 * 110 * 4 / 2**20)


@pytest.mark.parametrize("argv, message", [
    (["--networks", "resnet9"], "unknown network"),
    (["--batch", "0"], "must be positive"),
    (["--clock", "cpu", "--threads", "2"], "--clock cpu needs --threads 1"),
])
def test_bad_arguments_are_one_clear_error(argv, message, capsys):
    with pytest.raises(SystemExit):
        throughput.parse_args(argv)
    assert message in capsys.readouterr().err


def test_one_thread_count_also_gets_the_whole_schedule_rows_once(tmp_path, monkeypatch):
    """With one --threads value the rows ran in this process and the whole-schedule rows were left out (found on
    2026-12-03). Now the rows run in a child told --no-schedule, and the schedule once, here."""
    children, schedules = [], []

    def fake_child(command, check):
        children.append(command)
        out = Path(command[command.index("--json") + 1])
        out.write_text(json.dumps([{"network": "resnet8", "variant": "relu", "kind": "train_step", "threads": 1}]))

    monkeypatch.setattr(throughput.subprocess, "run", fake_child)
    monkeypatch.setattr(throughput, "schedule_records",
                        lambda spaces, optimizer, threads: schedules.append((spaces, optimizer, threads)) or [])
    throughput.main(["--threads", "1", "--device", "cpu", "--json", str(tmp_path / "b.json")])
    assert len(children) == 1 and "--no-schedule" in children[0]
    assert schedules == [(["simple", "complex"], "drnas", 1)]
    children.clear(), schedules.clear()
    throughput.main(["--threads", "1", "--device", "cpu", "--no-schedule", "--networks", "resnet8", "--quick"] +
                    ["--batch", "8", "--steps", "1", "--json", str(tmp_path / "c.json")])
    assert children == [] and schedules == []  # --no-schedule (or --quick): the rows here, no schedule
