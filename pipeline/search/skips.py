"""Skipped search steps leave no trace, and too many of them end the search.

A search step whose loss or gradients are not finite is skipped: no optimizer update. Its forward pass in train
mode has already moved every BatchNorm's running statistics, though, and one NaN batch leaves NaN buffers for the
rest of the search (validation accuracy at chance, NaN in supernet.pt, every perturbation candidate scoring the
same). `BatchNormGuard` saves the buffers before a step and puts them back when the step is skipped.

A search that skips many steps has not searched: `check_skipped` fails it above `MAX_SKIPPED_FRACTION` of its
steps (weight and architecture steps together), with one line saying what to change.
"""
from __future__ import annotations

import torch
from torch import nn

# Above this fraction of skipped steps the search is stopped: a few overflowing batches are tolerable noise; this
# many means the settings diverge (learning rate, betas, the operator set), and the genotype would mean nothing.
MAX_SKIPPED_FRACTION = 0.05


class SearchDiverged(RuntimeError):
    """Too many of the search's steps were skipped as not finite (a user error: the settings diverge)."""


class BatchNormGuard:
    """Saves every BatchNorm running buffer of `model` (mean, variance, batch count) before a step and restores
    them if the step is skipped. The copies are allocated once: a step costs one in-place copy of each buffer."""

    def __init__(self, model: nn.Module):
        self.buffers = [buffer for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)
                        for buffer in (module.running_mean, module.running_var, module.num_batches_tracked)
                        if buffer is not None]
        self.saved = [torch.empty_like(buffer) for buffer in self.buffers]

    def save(self) -> None:
        with torch.no_grad():
            for copy, buffer in zip(self.saved, self.buffers):
                copy.copy_(buffer)

    def restore(self) -> None:
        with torch.no_grad():
            for copy, buffer in zip(self.saved, self.buffers):
                buffer.copy_(copy)


def check_skipped(skipped: int, steps: int, epoch: int, limit: float = MAX_SKIPPED_FRACTION) -> None:
    """Raise SearchDiverged when more than `limit` of the `steps` taken so far (up to `epoch`, 1-based) were
    skipped."""
    if steps and skipped / steps > limit:
        raise SearchDiverged(
            f"the search skipped {skipped} of its {steps} steps by epoch {epoch} ({skipped / steps:.0%}, more than "
            f"the {limit:.0%} allowed) because their loss or gradients were not finite; lower search.lr or "
            f"search.arch_lr, set search.beta_clamp, or drop the operators that overflow from search.op_set")
