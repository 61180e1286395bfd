import importlib.util
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from pipeline.data.augment import BatchLoader
from pipeline.training.checkpoint import CheckpointError, load_checkpoint
from pipeline.training.device import resolve_device, seed_everything
from pipeline.space.models import build_resnet
from pipeline.training.train import evaluate, parameter_groups, train_model
from pipeline.training.train_config import TrainConfig, learning_rate

SCRIPT = Path(__file__).with_name("train_subprocess_script.py")
REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("train_subprocess_script", SCRIPT)
script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(script)

BATCH = 8
TRAIN_COUNT = 128  # 16 batches per epoch
# ResNet8's activation sites: the stem plus two per block, three blocks.
ACTIVATION_SITES = 7


pytestmark = pytest.mark.usefixtures("one_thread")


def loaders(random_labels=False):
    # No augmentation here: a 4-pixel crop padding would hide half of these 8x8 images (the subprocess run
    # covers augmentation).
    train = BatchLoader(*script.colour_task(TRAIN_COUNT, 1, random_labels), BATCH, shuffle=True, augment=False,
                        seed=3)
    test = BatchLoader(*script.colour_task(50, 2, random_labels), 50, shuffle=False, augment=False)
    return train, test


def config(**changes):
    values = dict(epochs=3, batch_size=BATCH, lr=0.05, device="cpu", seed=0)
    return TrainConfig(**{**values, **changes})


def run(cfg, activation=None, random_labels=False, **kwargs):
    seed_everything(cfg.seed)
    model = build_resnet("resnet8", activation) if activation else build_resnet("resnet8")
    result = train_model(model, *loaders(random_labels), cfg, progress=False, **kwargs)
    return model, result


def assert_same_run(model_a, result_a, model_b, result_b):
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), f"{name} differs"

    def strip(history):
        return [{k: v for k, v in record.items() if k != "epoch_time_s"} for record in history]
    assert strip(result_a.history) == strip(result_b.history)


@pytest.fixture(scope="module")
def reference(one_thread):
    """An uninterrupted 3-epoch cosine run on the colour task."""
    return run(config())


@pytest.mark.parametrize("field, value, message", [
    ("epochs", 0, "greater than or equal to 1"), ("batch_size", 2.5, "valid integer"), ("lr", -0.1, "greater than or equal to 0"),
    ("lr", math.nan, "finite number"), ("momentum", 1.0, "less than 1"), ("weight_decay", -1, "greater than or equal"),
    ("schedule", "step", "'cosine'"), ("gamma", 0, "greater than 0"), ("label_smoothing", 1.0, "less than 1"),
    ("amp", "yes", "valid boolean"), ("grad_clip", 0, "greater than 0"), ("seed", -1, "greater than or equal to 0"),
    ("divergence_loss", 0, "greater than 0"), ("chance_margin", 100, "less than 100"), ("device", "", "at least 1"),
])
def test_config_rejects_bad_values_naming_the_field(field, value, message):
    with pytest.raises(ValidationError) as caught:
        config(**{field: value})
    error = caught.value.errors()[0]
    assert error["loc"] == (field,) and message in error["msg"]


@pytest.mark.parametrize("field, value, message", [
    ("milestones", [5, 3], "increasing"), ("milestones", [2], "only apply"), ("warmup_epochs", 4, "at most epochs"),
])
def test_config_rejects_inconsistent_values_naming_the_field(field, value, message):
    with pytest.raises(ValidationError) as caught:
        config(**{field: value})
    assert f"{field} = {value!r} is invalid" in str(caught.value) and message in str(caught.value)


def test_multistep_needs_milestones_and_nesterov_needs_momentum():
    with pytest.raises(ValueError, match="milestones.*at least one"):
        config(schedule="multistep")
    with pytest.raises(ValueError, match="nesterov.*momentum > 0"):
        config(nesterov=True, momentum=0.0)


def test_learning_rate_schedules():
    cosine = config(epochs=4, lr=0.1, warmup_epochs=1)
    assert [learning_rate(cosine, s, 10) for s in (0, 4, 9)] == pytest.approx([0.01, 0.05, 0.1])
    assert learning_rate(cosine, 10, 10) == pytest.approx(0.1)
    assert learning_rate(cosine, 25, 10) == pytest.approx(0.05)
    assert 0 < learning_rate(cosine, 39, 10) < 1e-3
    steps = config(epochs=6, lr=0.1, schedule="multistep", milestones=[2, 4], gamma=0.1)
    assert [learning_rate(steps, s, 10) for s in (19, 20, 39, 40)] == pytest.approx([0.1, 0.01, 0.01, 0.001])
    assert learning_rate(config(schedule="constant", lr=0.3), 1000, 10) == 0.3


class BetaSwish(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.beta = nn.Parameter(torch.ones(channels))

    def forward(self, x):
        return x * torch.sigmoid(self.beta.view(1, -1, 1, 1) * x)


def test_activation_betas_get_no_weight_decay():
    groups = parameter_groups(build_resnet("resnet8", BetaSwish), weight_decay=5e-4)
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]
    assert all(p.dim() == 1 and p.shape[0] in (16, 32, 64) for p in groups[1]["params"])
    assert len(groups[1]["params"]) == ACTIVATION_SITES
    assert len(parameter_groups(build_resnet("resnet8"), 5e-4)) == 1


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    for bad in ("banana", "cuda:99", "xla"):
        with pytest.raises(ValueError, match="available here: auto, cpu"):
            resolve_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available; available here: auto, cpu"):
        resolve_device("cuda")


def test_learns_the_colour_task(reference):
    model, result = reference
    assert result.status == "ok" and result.diverged_epoch is None and result.resumed_from_epoch == 0
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert set(result.history[0]) == {"epoch", "lr", "train_loss", "train_top1", "train_top5", "grad_norm_mean",
                                      "grad_norm_max", "test_loss",
                                      "test_top1", "test_top5", "epoch_time_s"}
    assert result.final["top1"] >= 75 and result.final["top5"] >= result.final["top1"]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.final == evaluate(model, loaders()[1], "cpu")
    assert result.epoch_time_s > 0


def test_same_seed_gives_identical_weights(reference):
    assert_same_run(*reference, *run(config()))


class StopTraining(Exception):
    pass


def test_resume_after_interruption_is_bit_exact(reference, tmp_path, caplog):
    path = tmp_path / "run.pt"

    def interrupt_in_epoch_2(record):
        if record["epoch"] == 2:  # called before epoch 2 is checkpointed: the checkpoint holds epoch 1
            raise StopTraining
    with pytest.raises(StopTraining):
        run(config(), checkpoint_path=path, on_epoch=interrupt_in_epoch_2)
    assert load_checkpoint(path)["epochs_done"] == 1
    with caplog.at_level(logging.INFO, logger="pipeline.training.train"):
        model, result = run(config(), checkpoint_path=path)
    assert "resuming from epoch 1 of 3" in caplog.text
    assert result.resumed_from_epoch == 1 and result.status == "ok"
    assert_same_run(*reference, model, result)


def test_extending_a_finished_run_equals_the_longer_run(tmp_path):
    # With a schedule that does not depend on the total length, 2 + 2 epochs must equal 4 epochs.
    steps = dict(schedule="multistep", milestones=[3])
    uninterrupted = run(config(epochs=4, **steps))
    path = tmp_path / "run.pt"
    run(config(epochs=2, **steps), checkpoint_path=path)
    model, result = run(config(epochs=4, **steps), checkpoint_path=path)
    assert result.resumed_from_epoch == 2
    assert_same_run(*uninterrupted, model, result)


def test_finished_run_is_not_retrained_and_foreign_checkpoints_are_refused(reference, tmp_path):
    path = tmp_path / "run.pt"
    run(config(), checkpoint_path=path)
    reports = []
    model, result = run(config(), checkpoint_path=path, on_epoch=reports.append)
    assert reports == [] and result.resumed_from_epoch == 3
    assert_same_run(*reference, model, result)
    with pytest.raises(CheckpointError, match="lr: 0.05 in file vs 0.1 now.*delete it"):
        run(config(lr=0.1), checkpoint_path=path)
    with pytest.raises(CheckpointError, match="epochs: 3 in file vs 4 now"):  # cosine depends on epochs
        run(config(epochs=4), checkpoint_path=path)
    with pytest.raises(CheckpointError, match="meta differs"):
        run(config(), checkpoint_path=path, checkpoint_meta={"network": "resnet8"})
    with pytest.raises(CheckpointError, match="model_signature"):
        run(config(), BetaSwish, checkpoint_path=path)


def test_killed_process_resumes_to_the_same_weights(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}

    def command(name, *extra):
        return [sys.executable, str(SCRIPT), str(tmp_path / f"{name}.ckpt"), str(tmp_path / f"{name}.out"), *extra]

    script.main(command("reference")[2:])  # the uninterrupted run, in this process: same code, same thread count
    marker = tmp_path / "blocked"
    with open(tmp_path / "killed.log", "w") as log:  # blocks in epoch index 1 at batch 2: epoch 1 is checkpointed
        process = subprocess.Popen(command("killed", "--block-at", "1", "2", str(marker)), env=env, cwd=REPO,
                                   stderr=log)
    try:
        script.wait_for_marker_and_kill(process, marker)
    finally:
        if process.poll() is None:
            process.kill()
    assert not (tmp_path / "killed.out").exists()
    assert load_checkpoint(tmp_path / "killed.ckpt")["epochs_done"] == 1
    rerun = subprocess.run(command("killed"), env=env, cwd=REPO, check=True, capture_output=True, text=True,
                           timeout=300)
    assert "resuming from epoch 1 of 3" in rerun.stderr
    reference, resumed = (torch.load(tmp_path / f"{n}.out", weights_only=True) for n in ("reference", "killed"))
    assert resumed["resumed_from_epoch"] == 1 and reference["resumed_from_epoch"] == 0
    assert resumed["history"] == reference["history"]
    for name, tensor in reference["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), f"{name} differs"


def test_huge_learning_rate_diverges_without_raising():
    model, result = run(config(lr=1e6, epochs=2))
    assert result.status == "diverged" and result.diverged_epoch == 1
    assert all(math.isnan(v) for v in result.final.values())
    assert len(result.history) == 1 and math.isnan(result.history[0]["test_top1"])


class NanAfter(nn.Module):
    """Identity for the first `calls` training-mode forward passes (shared counter), NaN afterwards."""
    counter = {"calls": 0}

    def __init__(self, calls):
        super().__init__()
        self.calls = calls

    def forward(self, x):
        if self.training:
            self.counter["calls"] += 1
        return torch.relu(x) if self.counter["calls"] <= self.calls else x * math.nan


def test_nan_activation_diverges_in_the_right_epoch(tmp_path):
    # The 20th training batch (epoch 2 of 16-batch epochs) goes NaN.
    NanAfter.counter["calls"] = 0
    calls = ACTIVATION_SITES * 19
    path = tmp_path / "run.pt"
    reports = []
    model, result = run(config(epochs=3), lambda channels: NanAfter(calls), checkpoint_path=path,
                        on_epoch=reports.append)
    assert result.status == "diverged" and result.diverged_epoch == 2
    assert [r["epoch"] for r in reports] == [1, 2] and math.isnan(reports[1]["train_loss"])
    assert math.isfinite(result.history[0]["test_loss"])
    # The diverged run is final: rerunning it reports the divergence again without training.
    model, again = run(config(epochs=3), lambda channels: NanAfter(calls), checkpoint_path=path)
    assert again.status == "diverged" and again.diverged_epoch == 2 and again.resumed_from_epoch == 2


def test_unlearnable_task_fails_to_learn():
    model, result = run(config(epochs=1, lr=0.0, chance_margin=10.0), random_labels=True)
    assert result.status == "failed_to_learn"
    assert result.final["top1"] <= 20.0


def test_bad_loaders_are_rejected_before_training():
    train, test = loaders()
    with pytest.raises(ValueError, match="batch_size=8 but TrainConfig.batch_size=32"):
        train_model(build_resnet("resnet8"), train, test, config(batch_size=32), progress=False)
    with pytest.raises(ValueError, match="set_epoch"):
        train_model(build_resnet("resnet8"), [next(iter(train))], test, config(), progress=False)
    empty = BatchLoader(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), BATCH,
                        shuffle=True, augment=False, drop_last=True)
    with pytest.raises(ValueError, match="train_loader yields no batches"):
        train_model(build_resnet("resnet8"), empty, test, config(), progress=False)
