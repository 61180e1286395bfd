"""Logs runs to one MLflow store; tests/test_tracking.py starts several of these at once to test concurrency.

Usage: python tests/mlflow_worker.py URI EXPERIMENT WORKER RUNS STEPS KEYS GO_FILE
Imports mlflow first, prints "ready", then waits for GO_FILE to appear so that all workers start writing together.
Worker w, run r, step s, key k logs the value expected_value(w, r, s, k).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.study.tracking import StageRun  # noqa: E402


def expected_value(worker: int, run: int, step: int, key: int) -> float:
    return worker * 10000 + run * 1000 + step + key / 10


def main() -> None:
    uri, experiment, worker, runs, steps, keys, go_file = sys.argv[1:8]
    worker, runs, steps, keys = int(worker), int(runs), int(steps), int(keys)
    import mlflow  # noqa: F401  (before the barrier: importing it takes seconds)
    print("ready", flush=True)
    deadline = time.monotonic() + 120
    while not Path(go_file).exists():  # barrier: the test creates GO_FILE once every worker is ready
        if time.monotonic() > deadline:
            sys.exit("no go signal within 120 s")
        time.sleep(0.01)
    for run in range(runs):
        tags = {"worker": worker, "run_index": run}
        with StageRun(f"worker{worker}-run{run}", experiment=experiment, tracking_uri=uri, tags=tags,
                      params={"worker": worker, "run": run}) as stage:
            for step in range(steps):
                stage.log_metrics({f"k{key}": expected_value(worker, run, step, key) for key in range(keys)},
                                  step=step)


if __name__ == "__main__":
    main()
