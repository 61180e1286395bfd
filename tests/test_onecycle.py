"""The `onecycle` learning-rate schedule: values against the formula written out, and its place in checkpoints."""
import math

import pytest

from pipeline.training.train_config import TrainConfig, learning_rate, trajectory_config


def config(**changes):
    return TrainConfig(**{"epochs": 5, "batch_size": 8, "lr": 0.1, "schedule": "onecycle", "warmup_epochs": 1,
                          **changes})


def test_rises_from_lr_over_25_along_half_a_cosine_then_falls_to_zero():
    cfg, steps = config(), 10  # rise: steps 0-9, fall: steps 10-49
    assert learning_rate(cfg, 0, steps) == pytest.approx(0.004)
    assert learning_rate(cfg, 5, steps) == pytest.approx(0.004 + 0.096 * 0.5)  # half-way up the cosine
    assert learning_rate(cfg, 10, steps) == pytest.approx(0.1)
    assert learning_rate(cfg, 30, steps) == pytest.approx(0.05)  # half-way down
    assert learning_rate(cfg, 49, steps) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 39 / 40)))
    values = [learning_rate(cfg, s, steps) for s in range(50)]
    assert values[:11] == sorted(values[:11]) and values[10:] == sorted(values[10:], reverse=True)


def test_without_warmup_epochs_it_starts_at_the_peak():
    cfg = config(warmup_epochs=0)
    assert learning_rate(cfg, 0, 10) == pytest.approx(0.004)  # the one rise step
    assert learning_rate(cfg, 1, 10) == pytest.approx(0.1)


def test_epochs_shape_it_so_a_checkpoint_must_match_them():
    assert "epochs" in trajectory_config(config())
    assert "epochs" not in trajectory_config(config(schedule="constant"))
