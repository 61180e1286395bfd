"""Short-budget retraining recipes: which change moves ReLU's test top-1 (issue 11, "the recipe at short budgets").

    python bench/recipe.py --schedule warmcos|onecycle|onecycle-flat-momentum --init he|torch --bn-decay yes|no
                           [--network resnet8] [--train-size 10000] [--epochs 5] [--seed 0] [--threads 1]

One training of a CIFAR ResNet with ReLU on a balanced subset of the training images (BatchLoader, batch 128,
crop and flip), SGD Nesterov momentum 0.9, peak lr 0.1, weight decay 5e-4, then the full test set. It changes
one thing at a time against the project's recipe (warmcos / he / yes):
- schedule: `warmcos` the project's (linear warmup over one epoch from lr/steps, then cosine to 0);
  `onecycle` torch.optim.lr_scheduler.OneCycleLR with its defaults (30% rise from lr/25, cosine down to
  lr/25e4, momentum cycled 0.95 -> 0.85 -> 0.95); `onecycle-flat-momentum` the same without momentum cycling.
- init: `he` the project's (convolutions kaiming_normal fan_out); `torch` PyTorch's default (kaiming_uniform
  a=sqrt(5), weights about 2.4x smaller: with BatchNorm after every convolution a smaller weight norm is a larger
  effective learning rate, which matters when training is too short for weight decay to equilibrate the norms).
- bn-decay: whether BatchNorm scales/biases and the classifier bias get weight decay.
Prints one JSON line with the final test top-1 and the CPU seconds.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from bench.retrain import load_loaders, plain_epochs  # noqa: E402
from pipeline.space.models import DEPTHS, build_resnet  # noqa: E402
from pipeline.training.device import seed_everything  # noqa: E402
from pipeline.training.train import evaluate  # noqa: E402
from pipeline.training.train_config import TrainConfig, learning_rate  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))
    p.add_argument("--cache-dir", default=str(ROOT / "data" / "cache"))
    p.add_argument("--network", default="resnet8", choices=sorted(DEPTHS))
    p.add_argument("--train-size", type=int, default=10_000)
    p.add_argument("--test-size", type=int, default=None)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--schedule", choices=("warmcos", "onecycle", "onecycle-flat-momentum"), default="warmcos")
    p.add_argument("--init", choices=("he", "torch"), default="he")
    p.add_argument("--bn-decay", choices=("yes", "no"), default="yes")
    return p.parse_args(argv)


def torch_default_init(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.reset_parameters()


def param_groups(model: nn.Module, decay_norms: bool, weight_decay: float = 5e-4) -> list[dict]:
    decayed = [p for p in model.parameters() if decay_norms or p.dim() > 1]
    plain = [p for p in model.parameters() if not (decay_norms or p.dim() > 1)]
    return [{"params": decayed, "weight_decay": weight_decay}] + (
        [{"params": plain, "weight_decay": 0.0}] if plain else [])


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.variants, args.repeats = ["plain"], 1
    train_loader, test_loader = load_loaders(args)
    train_loader.seed = args.seed
    seed_everything(args.seed, deterministic=True)
    model = build_resnet(args.network)
    if args.init == "torch":
        torch_default_init(model)
    optimizer = torch.optim.SGD(param_groups(model, args.bn_decay == "yes"), lr=args.lr, momentum=0.9, nesterov=True)
    steps = len(train_loader)
    if args.schedule == "warmcos":
        cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch, lr=args.lr, warmup_epochs=1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: learning_rate(cfg, s, steps) / args.lr)
    else:
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.epochs * steps,
                                                        cycle_momentum=args.schedule == "onecycle")
    started, wall = time.process_time(), time.perf_counter()
    plain_epochs(model, optimizer, scheduler, train_loader, args.epochs, lambda epoch, loss: print(
        f"epoch {epoch + 1} train loss {loss:.4f} ({time.perf_counter() - wall:.0f} s)", file=sys.stderr, flush=True))
    final = evaluate(model, test_loader, "cpu")
    record = {k: v for k, v in vars(args).items() if k not in ("source", "cache_dir", "variants", "repeats")}
    record |= {"test_top1": final["top1"], "test_loss": final["loss"], "cpu_s": time.process_time() - started,
               "wall_s": time.perf_counter() - wall}
    print(json.dumps(record), flush=True)
    return record


if __name__ == "__main__":
    main()
