"""Wall time of a search with progressive shrinking, per epoch, under each kernel policy for its shrinking cell.

    python bench/shrinking_search.py [--optimizer darts] [--space complex] [--epochs 3] [--images 2500]
                                     [--policies full,eager] [--json FILE]

Policies: `full` (the default since 2026-12-01): the compiled kernel of the full candidate set, the dropped
candidates weighted 0, while more than `pipeline.kernels.fused.FULL_KERNEL_ABOVE_SHARE` of the candidates is left,
then the eager cell of the remaining candidates; `eager`: the eager cell of the remaining candidates throughout (the
policy before). Each policy runs in its own process with its own fresh inductor cache, so the full policy pays its
compile as a first search on a new machine does. Random CIFAR-shaped images (the cost does not depend on them),
ResNet-8, GRAFS's schedule: ReLU warm start in epoch 0, drops from epoch 1.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pipeline.data.augment import BatchLoader  # noqa: E402
from pipeline.kernels import fused  # noqa: E402
from pipeline.search.loop import SearchConfig, run_search  # noqa: E402

POLICIES = {"full": fused.FULL_KERNEL_ABOVE_SHARE, "eager": 2.0}  # a share above 1: never the full kernel


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--optimizer", default="darts", choices=("darts", "drnas"))
    p.add_argument("--space", default="complex", choices=("simple", "complex"))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--images", type=int, default=2500, help="training and as many validation images per epoch")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--policies", default="full,eager")
    p.add_argument("--json", type=Path)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.policies = args.policies.split(",")
    unknown = sorted(set(args.policies) - set(POLICIES))
    if unknown:
        p.error(f"unknown --policies {unknown}; choose from {sorted(POLICIES)}")
    if args.epochs < 2 or args.images < args.batch:
        p.error("--epochs must be at least 2 (drops start at epoch 1) and --images at least --batch")
    return args


def loader(count: int, batch: int, seed: int) -> BatchLoader:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=g)
    return BatchLoader(images, torch.randint(0, 10, (count,), generator=g), batch, shuffle=True, augment=True,
                       seed=seed)


def child(args) -> dict:
    policy = args.policies[0]
    fused.FULL_KERNEL_ABOVE_SHARE = POLICIES[policy]
    cfg = SearchConfig(optimizer=args.optimizer, space=args.space, network="resnet8", epochs=args.epochs,
                       batch_size=args.batch, device="cpu", seed=0, warmstart_epochs=1, start_shrinking=1,
                       bn_recalibration_batches=2)
    started = time.perf_counter()
    result = run_search(cfg, loader(args.images, args.batch, 1), loader(args.images, args.batch, 2))
    return {"policy": policy, "optimizer": args.optimizer, "space": args.space, "epochs": args.epochs,
            "images": args.images, "threads": torch.get_num_threads(), "wall_s": time.perf_counter() - started,
            "epoch_s": [r["epoch_time_s"] for r in result.history],
            "remaining_fraction": [r["remaining_fraction"] for r in result.history]}


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return None
    records = []
    for policy in args.policies:
        with tempfile.TemporaryDirectory() as cache:
            command = [sys.executable, __file__, "--child", "--policies", policy, "--optimizer", args.optimizer,
                       "--space", args.space, "--epochs", str(args.epochs), "--images", str(args.images),
                       "--batch", str(args.batch)]
            done = subprocess.run(command, capture_output=True, text=True, check=True,
                                  env=os.environ | {"TORCHINDUCTOR_CACHE_DIR": cache})
        record = json.loads(done.stdout.strip().splitlines()[-1])
        records.append(record)
        epochs = ", ".join(f"{t:.0f}" for t in record["epoch_s"])
        print(f"{policy}: {record['wall_s']:.0f} s (epochs: {epochs} s; remaining fraction after each: "
              f"{', '.join(f'{f:.2f}' for f in record['remaining_fraction'])})", flush=True)
    if args.json:
        args.json.write_text(json.dumps(records, indent=2))
    return records


if __name__ == "__main__":
    main()
