"""A tiny checkpointed training run, started as a separate process by tests/test_train.py to kill and resume it.

Usage: python tests/train_subprocess_script.py CHECKPOINT OUT [--epochs N] [--block-at EPOCH BATCH MARKER]
Writes the final weights and history to OUT. With --block-at the run writes MARKER at that training batch and
blocks there, so a test kills it at a known point in the middle of an epoch, with no race against the clock.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path

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


class WrappedLoader:
    """A BatchLoader seen through a test's wrapper: same length, batch size and epochs; `self.epoch` is the epoch
    being iterated, for wrappers that act at a chosen (epoch, batch)."""

    def __init__(self, loader: BatchLoader):
        self.loader, self.batch_size, self.epoch = loader, loader.batch_size, 0

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.loader.set_epoch(epoch)


class BlockingLoader(WrappedLoader):
    """Wraps a BatchLoader; at batch `batch` of epoch `epoch` it writes `marker` and blocks for good, so a test can
    SIGKILL the process at exactly that point (the checkpoint of the epoch before is written by then)."""

    def __init__(self, loader: BatchLoader, epoch: int, batch: int, marker: str):
        super().__init__(loader)
        self.block_at, self.marker = (epoch, batch), Path(marker)

    def __iter__(self):
        for index, batch in enumerate(self.loader):
            if (self.epoch, index) == self.block_at:
                self.marker.write_text(f"epoch {self.epoch} batch {index}\n")
                while True:  # until killed
                    time.sleep(60)
            yield batch


def add_block_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--block-at", nargs=3, metavar=("EPOCH", "BATCH", "MARKER"),
                        help="write MARKER at batch BATCH of epoch EPOCH (0-based) and block there until killed")


def maybe_blocking(loader: BatchLoader, block_at) -> BatchLoader | BlockingLoader:
    return loader if block_at is None else BlockingLoader(loader, int(block_at[0]), int(block_at[1]), block_at[2])


def wait_for_marker_and_kill(process, marker: Path, timeout_s: float = 300) -> None:
    """Wait until the blocked run has written its marker (it cannot move on), then SIGKILL it."""
    deadline = time.monotonic() + timeout_s
    while not marker.exists():
        assert process.poll() is None, "the run ended before it reached the block point"
        assert time.monotonic() < deadline, "timed out waiting for the run to reach the block point"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--epochs", type=int, default=3)
    add_block_argument(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # same arithmetic in every run, whatever the machine's load
    seed_everything(0)
    model = build_resnet("resnet8")
    train_loader = BatchLoader(*colour_task(96, seed=1), 16, shuffle=True, augment=True, seed=7)
    test_loader = BatchLoader(*colour_task(50, seed=2), 50, shuffle=False, augment=False)
    train_loader = maybe_blocking(train_loader, args.block_at)
    cfg = TrainConfig(epochs=args.epochs, batch_size=16, lr=0.05, device="cpu", seed=0)
    result = train_model(model, train_loader, test_loader, cfg, checkpoint_path=args.checkpoint, progress=False)
    history = [{k: v for k, v in record.items() if k != "epoch_time_s"} for record in result.history]
    torch.save({"model": model.state_dict(), "history": history, "status": result.status,
                "resumed_from_epoch": result.resumed_from_epoch}, args.out)


if __name__ == "__main__":
    # Here, not in main(): tests also call main() in their own process, whose logging is pytest's.
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    main()
