"""TrainConfig.eval_every: the test set is evaluated every N epochs and after the last, without changing training."""
import math

import pytest
import torch

from pipeline.data.augment import BatchLoader
from pipeline.space.models import build_resnet
from pipeline.training.device import seed_everything
from pipeline.training.train import train_model
from pipeline.training.train_config import TrainConfig
from tests.train_subprocess_script import colour_task


pytestmark = pytest.mark.usefixtures("one_thread")


class CountingLoader(BatchLoader):
    """A test loader that counts the passes made over it."""
    passes = 0

    def __iter__(self):
        self.passes += 1
        return super().__iter__()


def run(eval_every: int, epochs: int = 5, checkpoint_path=None, deterministic: bool = True):
    seed_everything(0)
    model = build_resnet("resnet8")
    train = BatchLoader(*colour_task(64, 1), 8, shuffle=True, augment=True, seed=3)
    test = CountingLoader(*colour_task(40, 2), 20, shuffle=False, augment=False)
    cfg = TrainConfig(epochs=epochs, batch_size=8, lr=0.05, device="cpu", eval_every=eval_every,
                      deterministic=deterministic)
    return model, train_model(model, train, test, cfg, progress=False, checkpoint_path=checkpoint_path), test


def test_evaluates_every_nth_epoch_and_the_last_with_the_same_training():
    model_each, each, _ = run(eval_every=1)
    model_sparse, sparse, test = run(eval_every=2)
    assert test.passes == 3  # after epochs 2, 4 and 5 (the last), not 1 and 3
    evaluated = [r["epoch"] for r in sparse.history if not math.isnan(r["test_top1"])]
    assert evaluated == [2, 4, 5]
    assert all(math.isnan(r[k]) for r in sparse.history if r["epoch"] in (1, 3)
               for k in ("test_loss", "test_top1", "test_top5"))
    # Evaluation must not touch the trajectory (BatchNorm statistics, RNG): same weights, same final metrics,
    # and the evaluated epochs report what the every-epoch run reported.
    for name, tensor in model_each.state_dict().items():
        assert torch.equal(tensor, model_sparse.state_dict()[name]), name
    assert sparse.final == each.final and sparse.status == each.status == "ok"
    for a, b in zip(each.history, sparse.history):
        assert a["train_loss"] == b["train_loss"]
        if b["epoch"] in evaluated:
            assert (a["test_loss"], a["test_top1"]) == (b["test_loss"], b["test_top1"])


def test_eval_every_larger_than_epochs_evaluates_once_at_the_end():
    _, result, test = run(eval_every=10, epochs=3)
    assert test.passes == 1 and not math.isnan(result.final["top1"])


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_bad_eval_every_is_one_clear_error(value):
    with pytest.raises(ValueError, match="eval_every"):
        run(eval_every=value)
