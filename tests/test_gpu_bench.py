"""bench/gpu.py's driver: the time box (jobs over budget are skipped and reported) and its argument errors.
The jobs themselves run in `python bench/gpu.py --dry-run` (CPU), too slow for the fast suite."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import gpu  # noqa: E402


def test_jobs_that_do_not_fit_the_budget_are_skipped_and_written(tmp_path, capsys):
    records = gpu.main(["--budget", "1", "--seconds", "5", "--out", str(tmp_path)])  # no job fits in 1 s
    assert [r["job"] for r in records] == [name for name, _, _ in gpu.JOBS]
    assert {r["status"] for r in records} == {"skipped"}
    assert json.loads((tmp_path / "gpu-bench.json").read_text()) == records
    table = (tmp_path / "gpu-bench.md").read_text().splitlines()
    assert len(table) == 4 + len(gpu.JOBS) and "| skipped:" in table[-1]
    assert "skipped (over budget): resnet8 eager fp32" in capsys.readouterr().out


def test_dry_run_plans_cpu_jobs_with_at_most_two_processes():
    plan = gpu.plan(gpu.parse_args(["--dry-run", "--only", "resnet8 eager bf16 channels_last x4 processes"]))
    [(name, job, estimate)] = plan
    assert job["device"] == "cpu" and job["processes"] == 2 and job["batch"] == 4 and estimate == 0.0


def test_out_defaults_to_the_runners_out_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("OUT", str(tmp_path))
    assert gpu.parse_args([]).out == tmp_path
    monkeypatch.delenv("OUT")
    assert gpu.parse_args([]).out == Path("gpu-bench")


@pytest.mark.parametrize("argv, message", [(["--budget", "0"], "must be positive"),
                                           (["--only", "resnet9"], "unknown job")])
def test_bad_arguments_are_one_clear_error(argv, message, capsys):
    with pytest.raises(SystemExit):
        gpu.parse_args(argv)
    assert message in capsys.readouterr().err
