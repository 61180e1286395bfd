"""Batches of CIFAR images held as tensors on the training device, augmented a whole batch at a time.

The idea follows Keller Jordan's cifar10-airbench: with 32x32 images a torch DataLoader with per-image PIL
transforms is the bottleneck, while the whole dataset fits in device memory (150 MB as uint8) and a random crop
and flip can be done for a batch with one indexing operation.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

# Per-channel mean and standard deviation of the CIFAR-10 training images in [0, 1], taken over all pixels
# of all 50,000 images. (The often-copied std (0.2023, 0.1994, 0.2010) is the mean of per-image stds instead.)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CROP_PADDING = 4


class BatchLoader:
    """Yields (x, y) batches: x float32 normalized (B, 3, H, W), y int64 (B,), both on `device`.

    With augment, each image is padded by 4 black pixels per side, cropped back at a random offset, and mirrored
    left-right with probability 1/2 (the He et al. 2016 CIFAR recipe, as in torchvision's RandomCrop(32, 4)
    followed by Normalize). All randomness comes from a CPU torch.Generator seeded from (seed, epoch), so the
    order and augmentation of an epoch are the same on any device and after a resume.

    Each pass over the loader uses the current epoch and then advances it by one, so a plain loop sees epochs
    0, 1, 2, ...; call set_epoch(e) before a pass to pin it, e.g. when resuming at epoch e.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, shuffle: bool,
                 augment: bool, drop_last: bool = False, device: str | torch.device = "cpu", seed: int = 0,
                 channels_last: bool = False):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be a uint8 tensor (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (len(images),):
            raise ValueError(f"labels must have shape ({len(images)},) to match the images, "
                             f"got {tuple(labels.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.device = torch.device(device)
        # Moved once: every batch is then gathered on the device, with no host-to-device copy per step.
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.drop_last, self.seed, self.channels_last = drop_last, seed, channels_last
        self.epoch = 0
        mean = torch.tensor(CIFAR10_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(CIFAR10_STD, device=self.device).view(1, 3, 1, 1)
        # x = (pixel / 255 - mean) / std, folded into one multiply-add.
        self.scale, self.shift = 1.0 / (255.0 * std), -mean / std

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.images) // self.batch_size
        return math.ceil(len(self.images) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_generator(self, epoch: int) -> torch.Generator:
        # SeedSequence mixes (seed, epoch) so nearby pairs such as (0, 1) and (1, 0) get unrelated streams.
        state = np.random.SeedSequence([self.seed, epoch]).generate_state(1, dtype=np.uint64)[0]
        return torch.Generator().manual_seed(int(state) & (2**63 - 1))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        count, height, width = len(self.images), self.images.shape[2], self.images.shape[3]
        generator = self.epoch_generator(epoch)
        # Draw the whole epoch's randomness up front, in a fixed order, on the CPU.
        order = torch.randperm(count, generator=generator) if self.shuffle else torch.arange(count)
        if self.augment:
            offsets = torch.randint(0, 2 * CROP_PADDING + 1, (count, 2), generator=generator)
            flips = torch.rand(count, generator=generator) < 0.5
        for batch in range(len(self)):
            positions = slice(batch * self.batch_size, (batch + 1) * self.batch_size)
            indices = order[positions].to(self.device)
            pixels = self.images[indices]
            if self.augment:
                pixels = crop_and_flip(pixels, offsets[positions].to(self.device),
                                       flips[positions].to(self.device), height, width)
            yield self.normalize(pixels), self.labels[indices]

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        return (pixels.to(memory_format=memory_format).float() * self.scale + self.shift).contiguous(
            memory_format=memory_format)


def crop_and_flip(pixels: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, height: int,
                  width: int) -> torch.Tensor:
    """Random crop from zero-padded images plus horizontal flip, for a whole batch in one gather.

    offsets (B, 2) in [0, 2 * padding] give each crop's top-left corner in the padded image; a flipped image
    reads its crop's columns right to left, so crop and flip are one index computation.
    """
    padded = F.pad(pixels, (CROP_PADDING,) * 4)  # zeros: black borders, before normalization
    rows = offsets[:, :1] + torch.arange(height, device=pixels.device)  # (B, H)
    columns = torch.arange(width, device=pixels.device)
    columns = offsets[:, 1:] + torch.where(flips[:, None], width - 1 - columns, columns)  # (B, W)
    batch = torch.arange(len(pixels), device=pixels.device)[:, None, None]
    # Indexing (B, H, W, C) with broadcast (B, 1, 1), (B, H, 1), (B, 1, W) gives (B, H, W, C).
    cropped = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], columns[:, None, :]]
    return cropped.permute(0, 3, 1, 2)
