"""A tiny checkpointed training run, started as a separate process by tests/test_train.py to kill and resume it.

Usage: python tests/train_subprocess_script.py CHECKPOINT OUT [--epochs N] [--batch-delay SECONDS]
Writes the final weights and history to OUT. With --batch-delay each training batch is delayed and announced
on stderr ("epoch E batch B"), so a test can kill the process at a known point in the middle of an epoch.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time

import torch

from pipeline.data.augment import BatchLoader
from pipeline.training.device import seed_everything
from pipeline.space.models import build_resnet
from pipeline.training.train import train_model
from pipeline.training.train_config import TrainConfig

IMAGE_SIZE = 8  # the networks pool globally, so tiny images keep the run to a few seconds


def colour_task(count: int, seed: int, random_labels: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images whose class (0..9) is their mean colour, plus pixel noise; learnable in a few epochs."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 10
    palette = torch.rand(10, 3, generator=torch.Generator().manual_seed(12345)) * 200 + 20
    noise = torch.randn(count, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator) * 20
    images = (palette[labels][:, :, None, None] + noise).clamp(0, 255).to(torch.uint8)
    if random_labels:
        labels = torch.randint(0, 10, (count,), generator=generator)
    return images, labels


class AnnouncingSlowLoader:
    """Wraps a BatchLoader, sleeping before each batch and printing which batch of which epoch comes next."""

    def __init__(self, loader: BatchLoader, delay_s: float):
        self.loader, self.delay_s, self.batch_size = loader, delay_s, loader.batch_size
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.loader.set_epoch(epoch)

    def __iter__(self):
        for index, batch in enumerate(self.loader):
            time.sleep(self.delay_s)
            print(f"epoch {self.epoch} batch {index}", file=sys.stderr, flush=True)
            yield batch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-delay", type=float, default=0.0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # same arithmetic in every run, whatever the machine's load
    seed_everything(0)
    model = build_resnet("resnet8")
    train_loader = BatchLoader(*colour_task(96, seed=1), 16, shuffle=True, augment=True, seed=7)
    test_loader = BatchLoader(*colour_task(50, seed=2), 50, shuffle=False, augment=False)
    if args.batch_delay > 0:
        train_loader = AnnouncingSlowLoader(train_loader, args.batch_delay)
    cfg = TrainConfig(epochs=args.epochs, batch_size=16, lr=0.05, device="cpu", seed=0)
    result = train_model(model, train_loader, test_loader, cfg, checkpoint_path=args.checkpoint, progress=False)
    history = [{k: v for k, v in record.items() if k != "epoch_time_s"} for record in result.history]
    torch.save({"model": model.state_dict(), "history": history, "status": result.status,
                "resumed_from_epoch": result.resumed_from_epoch}, args.out)


if __name__ == "__main__":
    # Here, not in main(): tests also call main() in their own process, whose logging is pytest's.
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    main()
