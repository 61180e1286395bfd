"""A skipped (non-finite) search step leaves no trace in BatchNorm's running statistics, and a search that skips
too many steps fails with one line (issue 24, item 2)."""
import pytest
import torch
from torch import nn

from pipeline.data.augment import BatchLoader
from pipeline.search.loop import run_search
from pipeline.search.skips import BatchNormGuard, SearchDiverged, check_skipped
import stages.search as search_stage
from stages.common import run
from tests.search_subprocess_script import CONFIG
from tests.train_subprocess_script import WrappedLoader, colour_task

pytestmark = pytest.mark.usefixtures("one_thread")


class PoisonedLoader(WrappedLoader):
    """Wraps a BatchLoader; the batches at (epoch, index) in `poisoned` (or every batch, with `everywhere`) come out
    as NaN images, as an overflowing augmentation or a corrupt image would."""

    def __init__(self, loader: BatchLoader, poisoned=(), everywhere: bool = False):
        super().__init__(loader)
        self.poisoned, self.everywhere = set(poisoned), everywhere

    def __iter__(self):
        for index, (x, y) in enumerate(self.loader):
            yield (x * float("nan") if self.everywhere or (self.epoch, index) in self.poisoned else x), y


def loaders(poisoned=(), everywhere=False):
    train = BatchLoader(*colour_task(64, seed=1), 16, shuffle=True, augment=True, seed=7)
    val = BatchLoader(*colour_task(64, seed=2), 16, shuffle=True, augment=False, seed=8)
    return PoisonedLoader(train, poisoned, everywhere), (PoisonedLoader(val, everywhere=True) if everywhere else val)


def batchnorm_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: buffer for name, buffer in model.named_buffers()
            if name.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")}


def test_the_guard_puts_back_every_buffer_a_nan_forward_pass_moved():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2),
                          nn.BatchNorm1d(2)).train()
    model(torch.randn(8, 3, 6, 6))  # statistics that are not the initial ones
    before = {name: buffer.clone() for name, buffer in batchnorm_buffers(model).items()}
    guard = BatchNormGuard(model)
    guard.save()
    model(torch.full((8, 3, 6, 6), float("nan")))
    assert not all(torch.isfinite(b).all() for b in batchnorm_buffers(model).values())  # the premise: NaN got in
    guard.restore()
    after = batchnorm_buffers(model)
    assert set(after) == set(before) and len(after) == 6  # two layers: mean, variance, batch count each
    for name, buffer in before.items():
        assert torch.equal(after[name], buffer), name


def test_one_nan_batch_leaves_every_buffer_finite_and_perturbation_scores_distinct():
    cfg = CONFIG.model_copy(update={"epochs": 2, "selection": "perturbation", "bn_recalibration_batches": 2})
    result = run_search(cfg, *loaders(poisoned={(0, 1)}), max_skipped_fraction=0.5)
    assert result.skipped_steps == 1 and result.steps == 2 * 2 * 4  # 2 epochs x 4 batches x (arch + weight)
    buffers = batchnorm_buffers(result.supernet)
    assert buffers and all(torch.isfinite(b).all() for b in buffers.values())
    # Each batch-count buffer counts the applied steps only: 4 arch + 4 weight steps per epoch, one weight step skipped.
    counts = {int(b) for name, b in buffers.items() if name.endswith("num_batches_tracked")}
    assert counts == {2 * 2 * 4 - 1}
    scores = [score for edge in result.perturbation_scores.values() for score in edge.values()]
    assert len(scores) > 2 and len(set(scores)) > 1, result.perturbation_scores  # NaN statistics: all at chance
    assert all(record["val_top1"] > 10.0 for record in result.history)  # the supernet is measured, not at chance


def test_a_search_above_the_skipped_fraction_stops_after_the_epoch():
    with pytest.raises(SearchDiverged, match=r"skipped 3 of its 8 steps by epoch 1 \(38%, more than the 25%"):
        run_search(CONFIG, *loaders(poisoned={(0, 0), (0, 1), (0, 3)}), max_skipped_fraction=0.25)
    check_skipped(2, 8, 1, limit=0.25)  # exactly at the limit: allowed


def test_an_all_nan_search_exits_non_zero_with_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(lambda argv: run_search(CONFIG, *loaders(everywhere=True)), *search_stage.STAGE_ERRORS)
    assert exit_info.value.code != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the search skipped 8 of its 8 steps by epoch 1 (100%"), lines
