"""Checks a stage runs before any long work, so that a full disk fails in a second, not after hours."""
from __future__ import annotations

import shutil
from pathlib import Path


class PreflightError(RuntimeError):
    """The stage cannot run here; the message says why and how to fix it."""


def check_free_space(path: str | Path, min_free_mb: float) -> float:
    """Raise PreflightError if the file system holding `path` has less than `min_free_mb` MiB free.

    Returns the free space in MiB. `path` may not exist yet: its closest existing parent is checked.
    """
    target = Path(path).resolve()
    while not target.exists() and target != target.parent:
        target = target.parent
    free_mb = shutil.disk_usage(target).free / 2**20
    if free_mb < min_free_mb:
        raise PreflightError(
            f"only {free_mb:.0f} MiB free on the disk holding {target}, this stage needs at least "
            f"{min_free_mb:.0f} MiB for its outputs and checkpoints; free some space (e.g. `dvc gc` or delete "
            f"old checkpoints/) or lower `preflight.min_free_mb` in params.yaml")
    return free_mb
