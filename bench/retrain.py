"""Retraining wall time: the project's loop (`pipeline.training.train.train_model`) against a plain PyTorch loop.

    python bench/retrain.py [--network resnet8] [--train-size 10000] [--epochs 5] [--repeats 1] [--threads 2]
                            [--variants plain,project,project-eval-each] [--profile] [--json FILE]

Both loops get the same data (a balanced subset of the CIFAR-10 training images, batches of 128 from
BatchLoader with crop and flip, the full test set), the same initial weights, optimizer (SGD Nesterov 0.1,
weight decay 5e-4 except on activation parameters) and per-iteration learning rate, and evaluate the test set
once at the end. The plain loop is what one writes from the PyTorch tutorial: forward, loss, zero_grad,
backward, step, with the learning rate set from a LambdaLR scheduler; no metrics, no checkpoint, no checks.
Since both compute the same thing in the same order, their final test top-1 agree (printed) unless a variant
changes the trajectory.

Variants: `plain`; `project` (train_model, eval_every = epochs); `project-eval-each` (train_model evaluating the
test set after every epoch, the default before eval_every existed); `plain-nondeterministic` (the plain loop
without torch's deterministic algorithms, which train_model asks for on CPU); `plain-nan-fill` (deterministic
with torch's default of filling new tensors with NaN, which seed_everything turns off). The runs are interleaved, and the
order of the variants alternates between repeats, so that a drift of the machine's speed (tens of percent within a minute on a shared machine) lands on every variant alike; the
ratio to `plain` of each repeat's neighbouring runs is reported, with its median over repeats.
`--profile` runs one `project` training under cProfile and prints the functions with the most cumulative time.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from pipeline.data.augment import BatchLoader  # noqa: E402
from pipeline.data.cifar import balanced_subset, load_cifar10  # noqa: E402
from pipeline.space.models import DEPTHS, build_resnet  # noqa: E402
from pipeline.training.device import seed_everything  # noqa: E402
from pipeline.training.train import evaluate, parameter_groups, train_model  # noqa: E402
from pipeline.training.train_config import TrainConfig, learning_rate  # noqa: E402

VARIANTS = ("plain", "project", "project-eval-each", "plain-nondeterministic", "plain-nan-fill")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"),
                   help="CIFAR-10 source as in params.yaml data.source")
    p.add_argument("--cache-dir", default=str(ROOT / "data" / "cache"))
    p.add_argument("--network", default="resnet8", choices=sorted(DEPTHS))
    p.add_argument("--train-size", type=int, default=10_000)
    p.add_argument("--test-size", type=int, default=None, help="balanced test subset (default: all 10,000)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", default="plain,project,project-eval-each")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: this process's CPU time, which a loaded machine's time-slicing leaves intact; "
                        "meaningful with --threads 1 only")
    p.add_argument("--profile", action="store_true", help="profile one `project` run instead of timing")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    args.variants = args.variants.split(",")
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or "plain" not in args.variants:
        p.error(f"--variants must include plain and be among {VARIANTS}, got {args.variants}")
    if args.clock == "cpu" and args.threads != 1:
        p.error("--clock cpu needs --threads 1 (with more threads CPU time includes OpenMP's busy waiting)")
    if min(args.train_size, args.epochs, args.batch, args.repeats, args.threads) < 1:
        p.error("--train-size, --epochs, --batch, --repeats and --threads must be positive")
    return args


def recipe(args, **overrides) -> TrainConfig:
    values = dict(epochs=args.epochs, batch_size=args.batch, lr=0.1, momentum=0.9, nesterov=True,
                  weight_decay=5e-4, schedule="cosine", warmup_epochs=1, device="cpu", seed=0)
    return TrainConfig(**values | overrides)


def fresh_model(network: str, cfg: TrainConfig) -> nn.Module:
    seed_everything(cfg.seed, deterministic=True)
    return build_resnet(network)


def plain_loop(model: nn.Module, train_loader, test_loader, cfg: TrainConfig, deterministic: bool = True,
               nan_fill: bool = False) -> dict:
    """The tutorial loop, with the project's learning-rate function and parameter groups so that both compute
    the same trajectory."""
    seed_everything(cfg.seed, deterministic=deterministic)
    torch.utils.deterministic.fill_uninitialized_memory = nan_fill
    optimizer = torch.optim.SGD(parameter_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum,
                                nesterov=cfg.nesterov)
    steps = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate(cfg, step, steps) / cfg.lr)
    plain_epochs(model, optimizer, scheduler, train_loader, cfg.epochs)
    return evaluate(model, test_loader, "cpu")


def plain_epochs(model: nn.Module, optimizer, scheduler, train_loader, epochs: int,
                 on_epoch: Callable[[int, float], None] | None = None) -> None:
    """The tutorial loop itself: forward, loss, zero_grad, backward, step, scheduler step per iteration;
    `on_epoch(epoch, mean training loss)` after each epoch if given (the loss is summed on the device, read once
    per epoch)."""
    criterion = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(epochs):
        train_loader.set_epoch(epoch)
        total = torch.zeros(())
        for x, y in train_loader:
            loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if on_epoch is not None:
                total += loss.detach()
        if on_epoch is not None:
            on_epoch(epoch, float(total) / len(train_loader))


def run_variant(variant: str, args, loaders) -> dict:
    train_loader, test_loader = loaders
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if variant.startswith("plain"):
        cfg = recipe(args)
        model = fresh_model(args.network, cfg)
        started = clock()
        final = plain_loop(model, train_loader, test_loader, cfg, deterministic=variant != "plain-nondeterministic",
                           nan_fill=variant == "plain-nan-fill")
        torch.utils.deterministic.fill_uninitialized_memory = False
    else:
        cfg = recipe(args, eval_every=1 if variant == "project-eval-each" else args.epochs)
        model = fresh_model(args.network, cfg)
        started = clock()
        final = train_model(model, train_loader, test_loader, cfg, progress=False).final
    return {"variant": variant, "seconds": clock() - started, "test_top1": final["top1"], "test_loss": final["loss"]}


def load_loaders(args):
    data = load_cifar10(args.source, args.cache_dir)
    train = balanced_subset(data.train_labels, args.train_size, 0)
    test = balanced_subset(data.test_labels, args.test_size, 0) if args.test_size else torch.arange(
        len(data.test_labels))
    train_loader = BatchLoader(data.train_images[train], data.train_labels[train], args.batch, shuffle=True,
                               augment=True, drop_last=True, seed=0)
    test_loader = BatchLoader(data.test_images[test], data.test_labels[test], 500, shuffle=False, augment=False)
    return train_loader, test_loader


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    loaders = load_loaders(args)
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        record = run_variant("project", args, loaders)
        profiler.disable()
        print(record)
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(35)
        return [record]
    run_variant("plain", argparse.Namespace(**vars(args) | {"epochs": 1}), loaders)  # one-time costs
    records = []
    for repeat in range(args.repeats):
        order = args.variants if repeat % 2 == 0 else args.variants[::-1]
        runs = {}
        for variant in order:
            runs[variant] = run_variant(variant, args, loaders) | {"repeat": repeat}
            print(f"  repeat {repeat} {variant:26s} {runs[variant]['seconds']:7.1f} s  "
                  f"test top-1 {runs[variant]['test_top1']:.2f}", flush=True)
        for record in runs.values():
            record["ratio_to_plain"] = record["seconds"] / runs["plain"]["seconds"]
        records += runs.values()
    print(f"\n{args.network}, {args.train_size} images x {args.epochs} epochs, {args.threads} threads, "
          f"{args.clock} clock, {args.repeats} repeat(s), order alternating; median over repeats:")
    for variant in args.variants:
        mine = [r for r in records if r["variant"] == variant]
        print(f"  {variant:26s} {statistics.median(r['seconds'] for r in mine):7.1f} s  "
              f"x plain {statistics.median(r['ratio_to_plain'] for r in mine):5.2f}  "
              f"test top-1 {mine[-1]['test_top1']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(records, indent=1) + "\n")
    return records


if __name__ == "__main__":
    main()
