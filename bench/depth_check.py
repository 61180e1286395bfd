"""The depth check (pipeline.training.depth_check) of known-good and known-bad functions on real CIFAR-10 images:
the table of docs/depth_check.md, beside which discretize.depth_check.max_grad_spread's default was chosen.

    python bench/depth_check.py [--networks resnet8 resnet20 resnet56] [--batch 128] [--sgd-steps 30]
                                [--sgd-batch N] [--threads 1] [--device cpu] [--json out.json]

Good: ReLU, Swish, GELU. Bad: x^3, exp and the mix the default study found, 0.6222*relu(x) + 0.3778*sqrt(x) with
the old steep sqrt (a ramp of slope 100 on [0, 1e-4]); beside it the same mix with GRAFS's sqrt(max(x, 1e-3)).
The SGD runs use params.yaml's evaluate section (lr, momentum, Nesterov, weight decay, clipping, batch size,
betas), as the discretize stage does. Every function starts from the same initial weights per network (seed).
Prints a markdown table: per function and network the gradient spread (largest / smallest per-block gradient
norm), growth (first block / last block), the forward second-moment growth (last / first), the loss at
initialisation, and after the SGD run its final loss (mean of the last 5 steps), largest gradient norm and whether
it diverged; then each function's verdict at the threshold.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402

from pipeline.data.augment import BatchLoader  # noqa: E402
from pipeline.data.cifar import balanced_subset, load_cifar10  # noqa: E402
from pipeline.space.genotype import BASELINES, Genotype  # noqa: E402
from pipeline.space.models import DEPTHS  # noqa: E402
from pipeline.space.ops import UNARY  # noqa: E402
from pipeline.training.depth_check import DepthCheckSettings, depth_check  # noqa: E402
from pipeline.training.device import resolve_device, seed_everything  # noqa: E402
from pipeline.training.train_config import TrainConfig  # noqa: E402

FOUND_RELU_WEIGHT = 0.6222  # the default study's found function: 0.6222*relu(x) + 0.3778*sqrt(max(0, x))


def functions() -> dict[str, Genotype]:
    """The functions of the table. The old steep sqrt is `sqrt_ramp` once GRAFS's sqrt took the name `sqrt`
    (and the old interp `interp_lin`); before that, `sqrt` and `interp` are the old ones."""
    found = {"gelu": Genotype("simple", ("gelu", "zero", "left"), (None, None, None)),
             "cube": Genotype("simple", ("cube", "zero", "left"), (None, None, None)),
             "exp": Genotype("simple", ("exp", "zero", "left"), (None, None, None))}
    if "sqrt_ramp" in UNARY:
        found["relu/sqrt_ramp mix"] = Genotype("simple", ("relu", "sqrt_ramp", "interp_lin"),
                                               (None, None, FOUND_RELU_WEIGHT))
        logit = math.log(FOUND_RELU_WEIGHT / (1 - FOUND_RELU_WEIGHT))  # GRAFS's interp weighs by sigmoid(beta)
        found["relu/sqrt mix (GRAFS sqrt)"] = Genotype("simple", ("relu", "sqrt", "interp"), (None, None, logit))
    else:
        found["relu/sqrt_ramp mix"] = Genotype("simple", ("relu", "sqrt", "interp"), (None, None, FOUND_RELU_WEIGHT))
    return dict(BASELINES) | found


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))
    p.add_argument("--cache-dir", default=str(ROOT / "data" / "cache"))
    p.add_argument("--params", default=str(ROOT / "params.yaml"))
    p.add_argument("--networks", nargs="+", default=["resnet8", "resnet20", "resnet56"], choices=sorted(DEPTHS))
    p.add_argument("--batch", type=int, default=128, help="images of the measurement at initialisation")
    p.add_argument("--sgd-steps", type=int, default=30)
    p.add_argument("--sgd-batch", type=int, default=None, help="default: params.yaml's evaluate.batch_size")
    p.add_argument("--max-grad-spread", type=float, default=None, help="default: params.yaml's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="also write every number here")
    return p.parse_args(argv)


def _num(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def table(results: dict[str, dict]) -> str:
    lines = ["| function | network | grad spread | grad growth | forward growth | loss at init | SGD final loss | "
             "SGD max grad norm | SGD diverged |", "|---|---|---|---|---|---|---|---|---|"]
    for name, check in results.items():
        for network, r in check["networks"].items():
            sgd = r.get("sgd", {})
            diverged = f"at step {sgd['diverged_step']}" if sgd.get("diverged") else ("no" if sgd else "n/a")
            lines.append(f"| {name} | {network} | {_num(r['grad_spread'])} | {_num(r['grad_growth'])} | "
                         f"{_num(r['forward_growth'])} | "
                         f"{_num(r['init_loss'])} | {_num(sgd.get('final_loss', math.nan))} | "
                         f"{_num(sgd.get('max_grad_norm', math.nan))} | {diverged} |")
    lines += ["", "| function | verdict |", "|---|---|"]
    lines += [f"| {name} | {check['summary']} |" for name, check in results.items()]
    return "\n".join(lines)


def first_epoch(loader: BatchLoader):
    """The loader's epoch-0 batches: every function and network runs SGD on the same batches."""
    loader.set_epoch(0)
    return iter(loader)


def main(argv=None) -> dict[str, dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    # Benches stay below the study layer: params.yaml's two sections are read as plain YAML.
    raw = yaml.safe_load(Path(args.params).read_text())
    ev = argparse.Namespace(**raw["evaluate"] | ({"batch_size": args.sgd_batch} if args.sgd_batch else {}))
    settings = DepthCheckSettings(**raw["discretize"]["depth_check"] | {
        "batch_size": args.batch, "sgd_steps": args.sgd_steps} | (
        {"max_grad_spread": args.max_grad_spread} if args.max_grad_spread is not None else {}))
    recipe = TrainConfig(epochs=1, batch_size=ev.batch_size, lr=ev.lr, momentum=ev.momentum, nesterov=ev.nesterov,
                         weight_decay=ev.weight_decay, grad_clip=ev.grad_clip, divergence_loss=ev.divergence_loss)
    beta_bound = raw["search"]["beta_clamp"] if ev.train_betas else None  # as the evaluate stage retrains
    data = load_cifar10(args.source, args.cache_dir)
    subset = balanced_subset(data.train_labels, args.batch + args.sgd_steps * ev.batch_size, args.seed)
    # The subset's indices are sorted, and the image tree is sorted by class: shuffle, or a batch is one class.
    subset = subset[torch.randperm(len(subset), generator=torch.Generator().manual_seed(args.seed))]
    images, labels = data.train_images[subset], data.train_labels[subset]
    probe = BatchLoader(images[:args.batch], labels[:args.batch], args.batch, shuffle=False, augment=False,
                        device=device)
    x, y = next(iter(probe))
    train = BatchLoader(images[args.batch:], labels[args.batch:], ev.batch_size, shuffle=True, augment=True,
                        drop_last=True, device=device, seed=args.seed)
    results = {}
    for name, genotype in functions().items():
        start = time.perf_counter()
        factory = genotype.factory(ev.beta_mode, ev.train_betas, None, ev.betas, beta_bound)
        results[name] = depth_check(factory, args.networks, x, y, lambda: first_epoch(train), recipe, settings,
                                    lambda: seed_everything(args.seed, deterministic=device.type == "cpu"))
        print(f"{name}: {results[name]['summary']} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str) + "\n")
    return results


if __name__ == "__main__":
    main()
