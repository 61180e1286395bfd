"""BatchNorm recalibration: running statistics gathered again for the network as it now computes.

A discretized network keeps the supernet's weights, and with them BatchNorm running statistics gathered under
the mixed activation. Its layers now see other activations, so the stored means and variances are wrong for it and
its measured accuracy understates it. Recalibration resets every BatchNorm's running statistics and passes
training batches through the network in train mode without gradients, with momentum None (a cumulative average:
every batch counts equally). Weights are untouched; the momentum and the train/eval mode are restored after.
"""
from __future__ import annotations

import itertools

import torch
from torch import nn

_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def recalibrate_batchnorm(model: nn.Module, loader, batches: int) -> int:
    """Reset the running statistics of every BatchNorm in `model` and re-estimate them from the first `batches`
    batches of `loader` (an iterable of (inputs, labels)). Returns the number of batches used; 0 (and nothing
    changed) when `batches` is 0 or the model has no BatchNorm."""
    layers = [m for m in model.modules() if isinstance(m, _BATCHNORM) and m.track_running_stats]
    if batches <= 0 or not layers:
        return 0
    momenta = [m.momentum for m in layers]
    was_training = model.training
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    used = 0
    try:
        model.train()
        with torch.no_grad():
            for x, _ in itertools.islice(loader, batches):
                model(x)
                used += 1
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        model.train(was_training)
    if used == 0:
        raise ValueError("BatchNorm recalibration got no batches: the training loader is empty")
    return used
