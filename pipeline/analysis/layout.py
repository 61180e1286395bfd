"""Where the evaluate stage's outputs and run records lie under results/: the one statement of that layout, for the
stage that writes them and the report that reads them (a light module: the stage imports nothing else from here)."""
from __future__ import annotations

from pathlib import Path


def run_dir(results: Path, activation: str, network: str, seed: int) -> Path:
    """A retraining's DVC output: metrics.json, history.csv, genotype.json, weights.pt."""
    return results / "evaluate" / activation / network / f"seed{seed}"


def run_record_path(results: Path, activation: str, network: str, seed: int) -> Path:
    """A retraining's run record: its wall times and MLflow model URI, values that differ between runs of the same
    inputs and so stay out of the DVC outputs (results/runs is no stage's output)."""
    return results / "runs" / "evaluate" / activation / network / f"seed{seed}.json"
