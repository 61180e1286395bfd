"""Who deletes a finished stage's checkpoint (pipeline.study.stage_checkpoints): the stage under `dvc repro`, the
Ray runner after its `dvc commit` (so a failed commit does not cost a recomputation from scratch)."""
from pathlib import Path

from pipeline.study.stage_checkpoints import KEEP_CHECKPOINT_ENV, checkpoint_file, drop_finished_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_a_stage_under_dvc_repro_deletes_its_checkpoint_and_under_the_runner_keeps_it(tmp_path, monkeypatch):
    checkpoint = tmp_path / "search-darts-simple-0.pt"
    checkpoint.write_bytes(b"state")
    monkeypatch.setenv(KEEP_CHECKPOINT_ENV, "1")
    drop_finished_checkpoint(checkpoint)
    assert checkpoint.exists(), "the runner deletes it only after the stage's commit"
    monkeypatch.delenv(KEEP_CHECKPOINT_ENV)
    drop_finished_checkpoint(checkpoint)
    assert not checkpoint.exists()
    drop_finished_checkpoint(checkpoint)  # already gone: no error


def test_the_runner_and_the_stages_name_a_checkpoint_alike():
    from stages.common import checkpoint_path

    stage = "evaluate-baseline@relu-resnet8-0"
    assert checkpoint_path(stage) == checkpoint_file(ROOT, stage) == ROOT / "checkpoints" / \
        "evaluate-baseline-relu-resnet8-0.pt"
