"""The report's curves as tidy CSV files, one per plotted line, for DVC's x/y plots.

`dvc plots diff <rev> <rev>` overlays the same file of several revisions or experiments, so each file holds one
curve, `epoch` and the value:
- reports/curves/train_loss/<network>/<activation>.csv and test_top1/<network>/<activation>.csv: the retraining
  curves, mean over the seeds that trained normally (as the results table averages; epochs without a test-set
  evaluation, evaluate.eval_every, are left out of test_top1);
- reports/curves/search_val_top1/<activation>.csv: the supernet's validation top-1 per epoch of the retrained
  function's search, with the discretized network's where the search measured it.
dvc.yaml declares the three folders as plots with their x and y.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import pandas as pd

RETRAINING_CURVES = ("train_loss", "test_top1")


def retraining_curves(runs: list[dict], history: Callable[[dict], pd.DataFrame], out_dir: Path) -> list[Path]:
    """One CSV per (curve, network, activation) with at least one normal run; `history(run)` is its history.csv."""
    paths = []
    normal = [run for run in runs if run["status"] == "ok"]
    for activation, network in dict.fromkeys((run["activation"], run["network"]) for run in normal):
        mine = [history(run).set_index("epoch") for run in normal
                if (run["activation"], run["network"]) == (activation, network)]
        for column in RETRAINING_CURVES:
            mean = pd.concat([frame[column] for frame in mine], axis=1).mean(axis=1, skipna=False).dropna()
            path = out_dir / column / network / f"{activation}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            mean.rename(column).rename_axis("epoch").reset_index().to_csv(path, index=False)
            paths.append(path)
    return paths


def search_curves(histories: Mapping[str, list[dict]], out_dir: Path) -> list[Path]:
    """One CSV per search: epoch, val_top1 (supernet) and discretized_val_top1 (null where not measured)."""
    paths = []
    for name, history in histories.items():
        frame = pd.DataFrame({"epoch": [record["epoch"] for record in history],
                              "val_top1": [record.get("val_top1") for record in history],
                              "discretized_val_top1": [record.get("discretized_val_top1") for record in history]})
        path = out_dir / "search_val_top1" / f"{name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)
        paths.append(path)
    return paths
