"""A tiny checkpointed search, started as a separate process by tests/test_search_resume.py to kill and resume it.

Usage: python tests/search_subprocess_script.py CHECKPOINT OUT [--batch-delay SECONDS] [--grafs]
Writes the final supernet state, genotype and history to OUT; with --batch-delay every training batch is delayed
and announced on stderr ("epoch E batch B") so that a test can kill the process in the middle of an epoch.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

import torch

from pipeline.data.augment import BatchLoader
from pipeline.search.loop import SearchConfig, run_search
from tests.train_subprocess_script import AnnouncingSlowLoader, colour_task

OPS = {"unary": ["identity", "zero", "relu", "sigmoid", "tanh"], "binary": ["add", "mul", "sigmul"]}
CONFIG = SearchConfig(optimizer="drnas", space="complex", op_set=OPS, epochs=3, batch_size=16, device="cpu", seed=3)
# --grafs: warm start, shrinking from epoch 0 (the masks change at every epoch), best epoch, perturbation selection.
GRAFS_CONFIG = dataclasses.replace(CONFIG, warmstart_epochs=1, start_shrinking=0, select="best",
                                   selection="perturbation", bn_recalibration_batches=2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--batch-delay", type=float, default=0.0)
    parser.add_argument("--grafs", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the same arithmetic in every run
    train = BatchLoader(*colour_task(64, seed=1), 16, shuffle=True, augment=True, seed=7)
    val = BatchLoader(*colour_task(64, seed=2), 16, shuffle=True, augment=False, seed=8)
    if args.batch_delay > 0:
        train = AnnouncingSlowLoader(train, args.batch_delay)
    result = run_search(GRAFS_CONFIG if args.grafs else CONFIG, train, val, checkpoint_path=args.checkpoint)
    history = [{k: v for k, v in record.items() if k != "epoch_time_s"} for record in result.history]
    torch.save({"model": result.supernet.state_dict(), "genotype": result.genotype.to_dict(), "history": history},
               args.out)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    main()
