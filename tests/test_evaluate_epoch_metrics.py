"""A retraining logs no placeholder NaN test metrics for the epochs that skip the test set (evaluate.eval_every)."""
import math

import torch
from torch import nn

from pipeline.training.train import train_model
from pipeline.training.train_config import TrainConfig
from stages.evaluate import epoch_metrics


class Batches:
    """A fixed list of (images, labels) batches, as a BatchLoader yields them."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)

    def set_epoch(self, epoch):
        pass


def test_an_epoch_without_a_test_evaluation_logs_its_training_metrics_only():
    record = {"epoch": 1, "lr": 0.1, "train_loss": 2.1, "train_top1": 20.0, "test_loss": math.nan,
              "test_top1": math.nan, "test_top5": math.nan, "epoch_time_s": 3.0}
    assert epoch_metrics(record) == {"lr": 0.1, "train_loss": 2.1, "train_top1": 20.0, "epoch_time_s": 3.0}


def test_an_evaluated_epoch_logs_everything_and_a_diverged_training_loss_stays_visible():
    record = {"epoch": 2, "lr": 0.1, "train_loss": math.nan, "test_loss": 2.0, "test_top1": 30.0}
    metrics = epoch_metrics(record)
    assert metrics["test_loss"] == 2.0 and metrics["test_top1"] == 30.0 and math.isnan(metrics["train_loss"])


def test_the_records_of_a_real_training_run_give_finite_metrics_only():
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 3, 4, 4, generator=generator), torch.randint(0, 10, (8,), generator=generator))
               for _ in range(2)]
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 10))
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.01, eval_every=2, device="cpu")
    logged = []
    train_model(model, Batches(batches), Batches(batches), cfg, on_epoch=lambda r: logged.append(epoch_metrics(r)))
    assert len(logged) == 2 and "test_top1" not in logged[0] and "test_top1" in logged[1]
    assert all(math.isfinite(value) for metrics in logged for value in metrics.values())
