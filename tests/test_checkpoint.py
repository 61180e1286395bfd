import random

import numpy as np
import pytest
import torch

from pipeline.training.checkpoint import CheckpointError, config_fingerprint, load_checkpoint, save_checkpoint
from pipeline.training.device import rng_state, set_rng_state


def test_config_fingerprint_is_stable_and_sensitive():
    a = config_fingerprint({"lr": 0.1, "net": "resnet20", "milestones": [100, 150]})
    assert a == config_fingerprint({"milestones": [100, 150], "net": "resnet20", "lr": 0.1})
    assert a == config_fingerprint({"milestones": (100, 150), "net": "resnet20", "lr": 0.1})
    assert a != config_fingerprint({"lr": 0.01, "net": "resnet20", "milestones": [100, 150]})
    assert len(a) == 16 and int(a, 16) >= 0
    with pytest.raises(ValueError, match="JSON-able"):
        config_fingerprint({"tensor": torch.zeros(1)})


def test_save_is_atomic_and_round_trips(tmp_path):
    path = tmp_path / "run" / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1, "weights": torch.arange(4.0)})
    save_checkpoint(path, {"epoch": 2, "weights": torch.arange(5.0)})  # overwrites in place
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]  # no temporary file left
    state = load_checkpoint(path, {"epoch": 2})
    assert torch.equal(state["weights"], torch.arange(5.0))


def test_failed_save_keeps_the_old_checkpoint_and_no_temp_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1})
    with pytest.raises(Exception):
        save_checkpoint(path, {"epoch": 2, "unpicklable": lambda: None})
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    assert load_checkpoint(path)["epoch"] == 1


def test_missing_file_means_no_checkpoint(tmp_path):
    assert load_checkpoint(tmp_path / "absent.pt", {"epoch": 1}) is None


def test_truncated_checkpoint_raises_with_path_and_fix(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"weights": torch.randn(1000)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert str(path) in message and "truncated or corrupt" in message and "delete it" in message


def test_garbage_file_raises_checkpoint_error(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path)


def test_mismatched_metadata_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"fingerprint": config_fingerprint({"lr": 0.1}), "network": "resnet20",
                           "config": {"lr": 0.1, "seed": 0}})
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path, {"fingerprint": config_fingerprint({"lr": 0.2})})
    assert str(path) in str(caught.value) and "fingerprint" in str(caught.value)
    with pytest.raises(CheckpointError, match="network is 'resnet20' in the file but 'resnet56'"):
        load_checkpoint(path, {"network": "resnet56"})
    with pytest.raises(CheckpointError, match="lr: 0.1 in file vs 0.2 now"):
        load_checkpoint(path, {"config": {"lr": 0.2, "seed": 0}})
    with pytest.raises(CheckpointError, match="activation is missing"):
        load_checkpoint(path, {"activation": "swish"})
    assert load_checkpoint(path, {"network": "resnet20"})["network"] == "resnet20"


def test_old_format_version_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format_version": 0, "epoch": 3}, path)
    with pytest.raises(CheckpointError, match="format_version"):
        load_checkpoint(path)


def _draw():
    return (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())


def test_rng_state_survives_a_weights_only_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1), np.random.randn()  # leave cached Gaussians in both states
    path = tmp_path / "rng.pt"
    save_checkpoint(path, {"rng": rng_state()})
    expected = _draw()
    _draw()  # move every generator on
    set_rng_state(load_checkpoint(path)["rng"])  # torch.load(weights_only=True) inside
    assert _draw() == expected


def test_stale_temporary_files_of_a_killed_save_are_removed(tmp_path):
    path = tmp_path / "checkpoint.pt"
    (tmp_path / ".checkpoint.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / ".other.pt.abc123.tmp").write_bytes(b"another run's")
    save_checkpoint(path, {"epoch": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.pt.abc123.tmp", "checkpoint.pt"]
