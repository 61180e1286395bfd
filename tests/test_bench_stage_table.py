"""bench/stage_table.py: stage wall times from a dvc repro log, training from the run records."""
import json

import pytest

from bench.stage_table import markdown, stage_spans, stage_table

LOG = """Running stage 'prepare':
> python -m stages.prepare
23:59:50 stages: stage prepare (params.yaml valid)
2026/12/02 23:59:52 INFO mlflow.store.db.utils: Creating initial MLflow database tables...
23:59:58 stages: prepared
Updating lock file 'dvc.lock'

Running stage 'search@darts-simple-0':
> python -m stages.search --optimizer darts --space simple --seed 0
00:00:05 stages: stage search@darts-simple-0 (params.yaml valid)
W1202 00:00:09.1 torch: no stamp this line starts with
00:01:45 stages: search darts-simple-s0 found relu(x)

Running stage 'evaluate-baseline@relu-resnet8-1':
00:01:50 stages: stage evaluate-baseline@relu-resnet8-1 (params.yaml valid)
00:02:20 stages: done
Running stage 'evaluate-searched@darts-simple-resnet8-0':
00:02:24 stages: stage evaluate-searched@darts-simple-resnet8-0 (params.yaml valid)
00:02:50 stages: done
"""


def test_spans_run_from_the_previous_stage_end_and_roll_over_midnight():
    spans = stage_spans(LOG)
    assert [s["stage"] for s in spans] == ["prepare", "search@darts-simple-0", "evaluate-baseline@relu-resnet8-1",
                                           "evaluate-searched@darts-simple-resnet8-0"]
    midnight = 24 * 3600
    assert (spans[0]["start"], spans[0]["first"], spans[0]["last"]) == (midnight - 10, midnight - 10, midnight - 2)
    assert (spans[1]["start"], spans[1]["first"], spans[1]["last"]) == (midnight - 2, midnight + 5, midnight + 105)


def test_the_table_splits_wall_time_into_start_up_training_and_overhead(tmp_path):
    runs = tmp_path / "results" / "runs"
    (runs / "search").mkdir(parents=True)
    (runs / "search" / "darts-simple-s0.json").write_text(json.dumps(
        {"epochs": [{"iterations_s": 50.0}, {"iterations_s": 30.0}]}))
    for activation, seed, times in (("relu", 1, [10.0, 10.0]), ("darts-simple", 0, [12.0, 8.0])):
        path = runs / "evaluate" / activation / "resnet8" / f"seed{seed}.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"epoch_times_s": times}))
    rows = {row["kind"]: row for row in stage_table(stage_spans(LOG), tmp_path)}
    assert rows["search"] == {"kind": "search", "count": 1, "total_s": 107, "wall_s": 107, "startup_s": 7,
                              "training_s": 80.0, "overhead_ratio": pytest.approx(27 / 80)}
    assert rows["evaluate-baseline"]["wall_s"] == 35 and rows["evaluate-baseline"]["training_s"] == 20.0
    assert rows["evaluate-searched"]["wall_s"] == 30 and rows["evaluate-searched"]["overhead_ratio"] == 0.5
    assert rows["prepare"]["training_s"] is None and rows["prepare"]["wall_s"] == 8
    table = markdown(list(rows.values()))
    assert "| search | 1 | 1.8 | 107.0 | 7.0 | 80.0 | 0.34 |" in table and table.endswith("| all | 4 | 3.0 | | | | |")


RESUMED = """Running stage 'evaluate-searched@darts-simple-resnet8-0':
WARNING: Process 'dvc repro' (Pid 1), in RWLock-file 'results/evaluate/darts-simple/resnet8/seed0' had been killed.
01:00:00 stages: stage evaluate-searched@darts-simple-resnet8-0 (params.yaml valid)
01:00:07 pipeline.training.train: resuming from epoch 1 of 2
01:00:20 stages: done
Running stage 'aggregate':
01:00:25 stages: stage aggregate (params.yaml valid)
01:00:31 stages: done
"""


def test_a_stage_interrupted_in_one_log_and_resumed_in_the_next_counts_once_with_both_parts(tmp_path):
    path = tmp_path / "results" / "runs" / "evaluate" / "darts-simple" / "resnet8" / "seed0.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"epoch_times_s": [12.0, 8.0]}))
    (path.parents[2] / "relu" / "resnet8").mkdir(parents=True)
    (path.parents[2] / "relu" / "resnet8" / "seed1.json").write_text('{"epoch_times_s": [1.0]}')
    (tmp_path / "results" / "runs" / "search").mkdir()
    (tmp_path / "results" / "runs" / "search" / "darts-simple-s0.json").write_text('{"epochs": []}')
    rows = {row["kind"]: row for row in stage_table(stage_spans(LOG) + stage_spans(RESUMED), tmp_path)}
    # 30 s in the first log (from the previous stage's end, 00:02:20, to 00:02:50), 20 s in the second.
    assert rows["evaluate-searched"]["count"] == 1
    assert rows["evaluate-searched"]["wall_s"] == 30 + 20 and rows["evaluate-searched"]["startup_s"] == 4 + 0
    assert rows["aggregate"]["wall_s"] == 11
