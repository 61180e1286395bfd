"""Classification metrics: top-k counts and a batch-size-weighted running average.

Ties are counted AGAINST the target: a sample is top-k correct only if fewer than k other classes score
at least as high as the target class. This makes the metric independent of how `torch.topk` happens to
order equal values, and it means a collapsed network whose logits are all equal scores 0%, never 100%.
A row containing NaN is always wrong. When k exceeds the number of classes it is clipped (every sample
with finite logits is then top-k correct); the result stays keyed by the k that was asked for.

Names are explicit (`top1`, `top5`): the original study stored top-5 under the top-1 name.
"""
from __future__ import annotations

from typing import Iterable

import torch


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive ints (e.g. (1, 5)), got {ks!r}")
    return ks


def _topk_correct_tensors(logits: torch.Tensor, targets: torch.Tensor,
                          ks: tuple[int, ...]) -> dict[int, torch.Tensor]:
    """Top-k correct counts as 0-d int64 tensors on the logits' device (no host synchronisation)."""
    logits = logits.detach().float()
    target_scores = logits.gather(1, targets.view(-1, 1))
    # Classes other than the target scoring >= the target (the target itself always satisfies >=).
    rivals = (logits >= target_scores).sum(dim=1) - 1
    valid = ~torch.isnan(logits).any(dim=1)
    num_classes = logits.shape[1]
    return {k: ((rivals < min(k, num_classes)) & valid).sum() for k in ks}


def _validate(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must be 2-D (batch, classes), got shape {tuple(logits.shape)}")
    if targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(f"targets must be 1-D with one label per logits row ({logits.shape[0]}), "
                         f"got shape {tuple(targets.shape)}")
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(f"targets must be integer class indices, got dtype {targets.dtype}")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= logits.shape[1]):
        raise ValueError(f"targets must lie in [0, {logits.shape[1]}) for {logits.shape[1]} classes, "
                         f"got range [{int(targets.min())}, {int(targets.max())}]")


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: Iterable[int] = (1, 5)) -> dict[int, int]:
    """Number of samples whose target is among the k best-scoring classes, for each k in `ks`."""
    ks = _check_ks(ks)
    _validate(logits, targets)
    return {k: int(count) for k, count in _topk_correct_tensors(logits, targets.long(), ks).items()}


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, ks: Iterable[int] = (1, 5)) -> dict[int, float]:
    """Top-k accuracy in percent for each k in `ks` (NaN for an empty batch)."""
    counts = topk_correct(logits, targets, ks)
    n = targets.shape[0]
    return {k: (100.0 * c / n if n else float("nan")) for k, c in counts.items()}


class MetricAccumulator:
    """Running loss / top-1 / top-5 over batches, weighted by batch size.

    Sums stay on the device of the batches so that `update` never waits for the accelerator; `result()`
    (and `mean_loss()`) synchronise once.
    """

    def __init__(self) -> None:
        self.count = 0
        self.num_classes: int | None = None
        self._loss_sum: torch.Tensor | float = 0.0
        self._top1: torch.Tensor | int = 0
        self._top5: torch.Tensor | int = 0

    def update(self, loss: torch.Tensor | float, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: `loss` is the batch MEAN loss, `logits` (batch, classes), `targets` (batch,)."""
        if logits.dim() != 2 or targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
            raise ValueError(f"expected logits (batch, classes) and targets (batch,), got "
                             f"{tuple(logits.shape)} and {tuple(targets.shape)}")
        n = targets.shape[0]
        if n == 0:
            return
        if isinstance(loss, torch.Tensor):
            loss = loss.detach().float()
        counts = _topk_correct_tensors(logits, targets.long(), (1, 5))
        self._loss_sum = self._loss_sum + loss * n
        self._top1 = self._top1 + counts[1]
        self._top5 = self._top5 + counts[5]
        self.count += n
        self.num_classes = logits.shape[1]

    def mean_loss(self) -> float:
        return float(self._loss_sum) / self.count if self.count else float("nan")

    def result(self) -> dict[str, float]:
        """{"loss", "top1", "top5"}: means over all samples seen, accuracies in percent (NaN if none)."""
        if not self.count:
            return {"loss": float("nan"), "top1": float("nan"), "top5": float("nan")}
        return {"loss": self.mean_loss(),
                "top1": 100.0 * int(self._top1) / self.count,
                "top5": 100.0 * int(self._top5) / self.count}
