"""A tiny checkpointed search, started as a separate process by tests/test_search_resume.py to kill and resume it.

Usage: python tests/search_subprocess_script.py CHECKPOINT OUT [--block-at EPOCH BATCH MARKER] [--optimizer NAME]
                                                                [--grafs]
Writes the final supernet state, genotype and history to OUT; with --block-at the run writes MARKER at that
training batch and blocks there, so that a test kills the process at a known point in the middle of an epoch.
--grafs runs the GRAFS procedure (warm start, shrinking masks, best-epoch and perturbation selection).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import torch

from pipeline.data.augment import BatchLoader
from pipeline.search.loop import TIMING_KEYS, SearchConfig, run_search
from pipeline.training.checkpoint import load_checkpoint
from tests.train_subprocess_script import add_block_argument, colour_task, maybe_blocking, wait_for_marker_and_kill

OPS = {"unary": ["identity", "zero", "relu", "sigmoid", "tanh"], "binary": ["add", "mul", "sigmul"]}
CONFIG = SearchConfig(optimizer="drnas", space="complex", op_set=OPS, epochs=3, batch_size=16, device="cpu", seed=3)
# --grafs: warm start, shrinking from epoch 0 (the masks change at every epoch), best epoch, perturbation selection.
GRAFS_CONFIG = CONFIG.model_copy(update=dict(warmstart_epochs=1, start_shrinking=0, select="best",
                                              selection="perturbation", bn_recalibration_batches=2))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--optimizer", default=CONFIG.optimizer)
    parser.add_argument("--grafs", action="store_true")
    add_block_argument(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the same arithmetic in every run
    train = BatchLoader(*colour_task(64, seed=1), 16, shuffle=True, augment=True, seed=7)
    val = BatchLoader(*colour_task(64, seed=2), 16, shuffle=True, augment=False, seed=8)
    train = maybe_blocking(train, args.block_at)
    config = GRAFS_CONFIG if args.grafs else CONFIG.model_copy(update={"optimizer": args.optimizer})
    result = run_search(config, train, val, checkpoint_path=args.checkpoint)
    history = [{k: v for k, v in record.items() if k not in TIMING_KEYS} for record in result.history]
    torch.save({"model": result.supernet.state_dict(), "genotype": result.genotype.to_dict(), "history": history,
                "relaxation": result.supernet.relaxation.state_dict()}, args.out)


def kill_and_resume(tmp_path: Path, *args: str) -> tuple[dict, dict, dict]:
    """Run the search uninterrupted (in this process), then in a subprocess that blocks in epoch index 1 at batch 2
    (epoch 1 is checkpointed), SIGKILL it there and run it again: (reference, resumed, the killed run's checkpoint).
    Asserts the rerun resumed from epoch 1 rather than restarting, and that the two histories are equal."""
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}

    def command(name, *extra):
        return [sys.executable, str(Path(__file__)), str(tmp_path / f"{name}.ckpt"), str(tmp_path / f"{name}.out"),
                *args, *extra]

    threads = torch.get_num_threads()
    try:
        main(command("reference")[2:])
    finally:
        torch.set_num_threads(threads)
    marker = tmp_path / "blocked"
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(command("killed", "--block-at", "1", "2", str(marker)), env=env, cwd=repo,
                                   stderr=log)
    try:
        wait_for_marker_and_kill(process, marker)
    finally:
        if process.poll() is None:
            process.kill()
    assert not (tmp_path / "killed.out").exists()
    killed = load_checkpoint(tmp_path / "killed.ckpt")
    assert killed["epoch"] == 1
    rerun = subprocess.run(command("killed"), env=env, cwd=repo, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming search from epoch 1" in rerun.stderr
    reference, resumed = (torch.load(tmp_path / f"{n}.out", weights_only=True) for n in ("reference", "killed"))
    assert resumed["genotype"] == reference["genotype"]
    assert json.dumps(resumed["history"]) == json.dumps(reference["history"])
    for name, tensor in reference["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), f"{name} differs"
    return reference, resumed, killed


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    main()
