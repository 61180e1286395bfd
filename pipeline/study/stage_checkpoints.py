"""Where a stage keeps its resume state, and who deletes it when the stage is done.

A search or retraining saves a checkpoint per epoch in `checkpoints/<stage>.pt` (outside its DVC outputs, which
DVC deletes before a run). Under `dvc repro` the stage deletes it itself when it ends, as before. Under the Ray
runner (`pipeline.study.cluster`) the stage only writes its outputs; the runner records them with `dvc commit`
and deletes the checkpoint after that commit. So a commit that fails (a full cache disk) leaves the checkpoint,
and the rerun resumes the finished stage from its last epoch instead of recomputing it from scratch.
"""
from __future__ import annotations

import os
from pathlib import Path

KEEP_CHECKPOINT_ENV = "ACTSEARCH_KEEP_CHECKPOINT"  # "1": the runner deletes the checkpoint after its commit
CHECKPOINT_DIR = "checkpoints"


def checkpoint_file(root: Path, stage: str) -> Path:
    """'evaluate-baseline@relu-resnet8-0' -> <root>/checkpoints/evaluate-baseline-relu-resnet8-0.pt."""
    return Path(root) / CHECKPOINT_DIR / f"{stage.replace('@', '-')}.pt"


def drop_finished_checkpoint(checkpoint: Path) -> None:
    """Called by a stage that wrote all its outputs: delete its checkpoint, unless the runner commits first."""
    if os.environ.get(KEEP_CHECKPOINT_ENV) != "1":
        Path(checkpoint).unlink(missing_ok=True)
