"""Ablation of the GRAFS procedure: DrNAS on the complex space with and without ReLU warm start and progressive
shrinking, argmax vs perturbation-based selection, and GRAFS's full procedure vs the plain poster procedure.

    python bench/ablation.py [--quick] [--device auto] [--seeds 0,1] [--json FILE] [--markdown FILE]

Every variant searches once per search seed on the real CIFAR-10 (the shared archive, loaded through
pipeline.data.cifar), then reports: the supernet's validation top-1 at the selected epoch, the discretized
network's (after BatchNorm recalibration), the discretization gap with and without recalibration, the genotype's
formula, and the test top-1 of the found function retrained from scratch (ResNet8, short recipe,
pipeline.training.train.train_model). A ReLU row retrained with the same recipe gives the reference.
Runs in one process, one run after the other; the time of each run and an estimate of what is left are printed.
`--quick` is a smoke run (tiny data, 2 search epochs, 1 retraining epoch, 2 variants) for tests.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pipeline.data.augment import BatchLoader  # noqa: E402
from pipeline.data.cifar import balanced_subset, load_cifar10, split_indices  # noqa: E402
from pipeline.kernels.fused_genotype import fast_forward  # noqa: E402
from pipeline.search.discretize import discretize  # noqa: E402
from pipeline.search.loop import SearchConfig, run_search  # noqa: E402
from pipeline.space.genotype import RELU  # noqa: E402
from pipeline.space.models import build_resnet  # noqa: E402
from pipeline.training.device import resolve_device, seed_everything  # noqa: E402
from pipeline.training.train import train_model  # noqa: E402
from pipeline.training.train_config import TrainConfig  # noqa: E402


def variants(epochs: int) -> dict[str, dict]:
    """SearchConfig changes per variant; GRAFS's epochs (warm start 1 of 50, shrinking from 2 of 50) scaled."""
    warm, start = max(1, round(epochs / 50)), max(1, round(2 * epochs / 50))
    plain = {"optimizer": "drnas", "space": "complex", "op_set": "grafs"}
    return {
        "drnas": plain,
        "drnas+warmstart": plain | {"warmstart_epochs": warm},
        "drnas+shrink": plain | {"start_shrinking": start},
        "drnas+warmstart+shrink": plain | {"warmstart_epochs": warm, "start_shrinking": start},
        "drnas+perturbation": plain | {"selection": "perturbation"},
        "grafs": plain | {"warmstart_epochs": warm, "start_shrinking": start, "drnas": {"per_site_sample": True},
                          "betas_with": "arch", "select": "best", "beta_init": "grafs", "beta_clamp": 10.0},
        "poster": plain | {"op_set": "poster"},
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))
    p.add_argument("--cache-dir", default=str(ROOT / "data" / "cache"))
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny data and epochs, two variants")
    p.add_argument("--seeds", default="0,1", help="search seeds, comma-separated")
    p.add_argument("--variants", default=None, help=f"comma-separated subset of {list(variants(50))}")
    p.add_argument("--search-train", type=int, default=5000, help="images for the supernet's weights")
    p.add_argument("--search-val", type=int, default=5000, help="images for the arch step and measurements")
    p.add_argument("--epochs", type=int, default=10, help="search epochs")
    p.add_argument("--batch", type=int, default=64, help="search batch")
    p.add_argument("--arch-lr", type=float, default=3e-3)
    p.add_argument("--retrain-train", type=int, default=10000)
    p.add_argument("--retrain-test", type=int, default=10000)
    p.add_argument("--retrain-epochs", type=int, default=5)
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    args = p.parse_args(argv)
    if args.quick:
        args.search_train = args.search_val = 64
        args.epochs, args.batch, args.retrain_train, args.retrain_test, args.retrain_epochs = 2, 32, 128, 100, 1
        args.variants = args.variants or "drnas,grafs"
    known = variants(args.epochs)
    args.variants = (args.variants or ",".join(known)).split(",")
    unknown = [v for v in args.variants if v not in known]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {list(known)}")
    try:
        args.seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds {args.seeds!r}: comma-separated integers, e.g. 0,1")
    if min(args.search_train, args.search_val, args.retrain_train) < args.batch:
        p.error("--search-train, --search-val and --retrain-train must hold at least one --batch")
    if not Path(args.source).exists():
        p.error(f"--source {args.source} does not exist: point it to the CIFAR-10 archive or folder")
    return args


def retrain(genotype, train, test, args, device) -> dict:
    """Test top-1 of `genotype` (or ReLU) retrained from scratch on ResNet8 (seed 0)."""
    cfg = TrainConfig(epochs=args.retrain_epochs, batch_size=128, lr=0.1, nesterov=True, weight_decay=5e-4,
                      warmup_epochs=min(1, args.retrain_epochs - 1), device=str(device), seed=0,
                      amp=device.type == "cuda")
    seed_everything(0, deterministic=device.type == "cpu")
    model = build_resnet("resnet8", genotype.factory("scalar", True, fast_forward))
    result = train_model(model, train, test, cfg, progress=False)
    return {"retrained_top1": result.final["top1"], "retrain_status": result.status}


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_cifar10(args.source, args.cache_dir)
    subset = balanced_subset(data.train_labels, args.search_train + args.search_val + args.retrain_train, seed=0)
    search_idx, retrain_idx = subset[: args.search_train + args.search_val], subset[args.search_train
                                                                                     + args.search_val:]
    weights_idx, arch_idx = split_indices(len(search_idx), args.search_train, args.search_val, seed=0)
    images, labels = data.train_images[search_idx], data.train_labels[search_idx]
    test_idx = balanced_subset(data.test_labels, args.retrain_test, seed=0)
    retrain_train = BatchLoader(data.train_images[retrain_idx], data.train_labels[retrain_idx], 128, shuffle=True,
                                augment=True, drop_last=True, device=device, seed=0)
    retrain_test = BatchLoader(data.test_images[test_idx], data.test_labels[test_idx], 1000, shuffle=False,
                               augment=False, device=device)
    runs = [(name, seed) for name in args.variants for seed in args.seeds]
    started, load = time.time(), os.getloadavg()[0]
    print(f"ablation: {len(runs)} searches ({args.epochs} epochs on {args.search_train} + {args.search_val} images) "
          f"and retrainings ({args.retrain_epochs} epochs, {args.retrain_train} images) on {device}; load {load:.1f}",
          flush=True)
    records = [{"variant": "relu (reference)", "seed": 0, "formula": "max(0, x)",
                **retrain(RELU, retrain_train, retrain_test, args, device)}]
    for i, (name, seed) in enumerate(runs):
        run_started = time.time()
        cfg = SearchConfig(**variants(args.epochs)[name], network="resnet8", epochs=args.epochs,
                           batch_size=args.batch, arch_lr=args.arch_lr, device=str(device), seed=seed,
                           amp=device.type == "cuda")
        train = BatchLoader(images[weights_idx], labels[weights_idx], args.batch, shuffle=True, augment=True,
                            drop_last=True, device=device, seed=seed)
        val = BatchLoader(images[arch_idx], labels[arch_idx], args.batch, shuffle=True, augment=False,
                          drop_last=True, device=device, seed=seed + 1)
        result = run_search(cfg, train, val)
        genotype, gap = discretize(result.supernet, val, device, cfg.amp, genotype=result.genotype,
                                   train_loader=train, recalibration_batches=cfg.bn_recalibration_batches)
        selected = result.history[result.selected_epoch - 1]
        record = {"variant": name, "seed": seed, "config": cfg.model_dump(mode="json"), "formula": genotype.formula(),
                  "genotype": genotype.to_dict(), "selected_epoch": result.selected_epoch,
                  "supernet_val_top1": selected["val_top1"], "discretized_val_top1": selected["discretized_val_top1"],
                  "discretization_gap_top1": gap["discretization_gap_top1"],
                  "discretization_gap_top1_recalibrated": gap.get("discretization_gap_top1_recalibrated"),
                  "history": [{k: r[k] for k in ("epoch", "val_top1", "discretized_val_top1", "formula")}
                              for r in result.history]}
        record |= retrain(genotype, retrain_train, retrain_test, args, device)
        record["seconds"] = time.time() - run_started
        records.append(record)
        write(records, args)  # after every run: a killed ablation keeps what it measured
        spent = time.time() - started
        print(f"[{i + 1}/{len(runs)}] {name} seed {seed}: supernet {record['supernet_val_top1']:.1f}, discretized "
              f"{record['discretized_val_top1']:.1f}, retrained {record['retrained_top1']:.1f} "
              f"({record['retrain_status']}), {record['formula']} | {record['seconds']:.0f} s, about "
              f"{spent / (i + 1) * (len(runs) - i - 1):.0f} s left", flush=True)
    print(f"done in {time.time() - started:.0f} s (load {load:.1f} before, {os.getloadavg()[0]:.1f} after)\n")
    print(markdown(records))
    write(records, args)
    return records


def write(records: list[dict], args) -> None:
    if args.json:
        args.json.write_text(json.dumps(records, indent=1) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(records))


def markdown(records: list[dict]) -> str:
    def cell(value):
        return "" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)

    lines = ["| variant | seed | supernet val top-1 | discretized val top-1 (BN recal.) | gap | gap (BN recal.) | "
             "selected epoch | formula | retrained top-1 (ResNet8) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append("| " + " | ".join(cell(r.get(k)) for k in (
            "variant", "seed", "supernet_val_top1", "discretized_val_top1", "discretization_gap_top1",
            "discretization_gap_top1_recalibrated", "selected_epoch")) + f" | `{r['formula']}` | "
            f"{cell(r['retrained_top1'])} ({r['retrain_status']}) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
