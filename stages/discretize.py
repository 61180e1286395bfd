"""Stage `discretize@<optimizer>-<space>-<seed>`: the searched supernet -> one concrete activation function.

Writes results/discretize/<optimizer>-<space>-s<seed>/: genotype.json (what evaluate retrains), formula.txt/.tex,
activation.png (beside ReLU and Swish) and discretize.json (equivalence warning, validation top-1/top-5 of the
supernet and of the discretized network on the architecture split, and the discretization gap, with the
supernet's BatchNorm statistics and after recalibrating them on training batches), and depth_check.json: how the
function carries signal through each evaluation network at initialisation (pipeline.training.depth_check), whose
one-line verdict discretize.json repeats as `depth_check` and `depth_flagged` for the results table. The genotype
is the one the search selected (search.select, search.selection).
"""
from __future__ import annotations

import json
import math
from typing import Iterator

import torch

from pipeline.data.augment import BatchLoader
from pipeline.space.genotype import Genotype
from pipeline.study.config import Params
from pipeline.training.depth_check import depth_check, mlflow_metrics
from pipeline.training.device import resolve_device, seed_everything
from pipeline.training.train_config import TrainConfig
from pipeline.analysis.describe import describe_genotype
from pipeline.search.discretize import discretize
from pipeline.search.loop import load_selected_genotype, load_supernet
from stages.common import RESULTS, load_prepared, log, run, search_loaders, searched_stage, stage_run, write_json


def run_depth_check(params: Params, genotype: Genotype, seed: int, device: torch.device) -> dict:
    """The depth check on evaluate.networks and discretize.depth_check.extra_networks, with the network built as
    the evaluate stage builds it and SGD runs at its learning rate, momentum, weight decay, clipping and batch
    size, on the images it retrains on."""
    ev, settings = params.evaluate, params.discretize.depth_check
    data = load_prepared()
    images, labels = data["train_images"], data["train_labels"]
    # Shuffled: the prepared images may be sorted by class, and one class would be no batch of real images.
    measured = BatchLoader(images, labels, settings.batch_size, shuffle=True, augment=False, device=device, seed=seed)
    x, y = next(iter(measured))
    train = BatchLoader(images, labels, ev.batch_size, shuffle=True, augment=True, drop_last=True, device=device,
                        seed=seed)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """From epoch 0 for every network (the same batches), for as many steps as asked."""
        epoch = 0
        while True:
            train.set_epoch(epoch)
            yield from train
            epoch += 1

    recipe = TrainConfig(epochs=1, batch_size=ev.batch_size, lr=ev.lr, momentum=ev.momentum, nesterov=ev.nesterov,
                         weight_decay=ev.weight_decay, grad_clip=ev.grad_clip, divergence_loss=ev.divergence_loss)
    # Trained betas stay within the search's bound, as the evaluate stage retrains them (one rule for all).
    beta_bound = params.search.beta_clamp if ev.train_betas else None
    factory = genotype.factory(ev.beta_mode, ev.train_betas, None, ev.betas, beta_bound)
    return depth_check(factory, list(ev.networks) + list(settings.extra_networks), x, y, batches, recipe, settings,
                       lambda: seed_everything(seed, deterministic=device.type == "cpu"))


def main(argv: list[str]) -> None:
    args, name, stage, params = searched_stage("discretize", __doc__.splitlines()[0], argv)
    device = resolve_device(params.study.device)
    supernet, cfg = load_supernet(RESULTS / "search" / name / "supernet.pt", device)
    selected = load_selected_genotype(RESULTS / "search" / name / "supernet.pt")
    # Recalibration batches at the search's batch size, as the search measured its discretized networks.
    train_loader, _ = search_loaders(cfg.batch_size, cfg.seed, device)
    # The gap is a measurement: every image of the architecture split, unaugmented.
    _, val_loader = search_loaders(params.discretize.batch_size, cfg.seed, device, drop_last=False,
                                   augment_arch=False)
    out = RESULTS / "discretize" / name
    tags = {"optimizer": args.optimizer, "space": args.space, "search_seed": args.seed, "network": cfg.network}
    run_params = {"discretize.batch_size": params.discretize.batch_size} | {
        f"discretize.depth_check.{key}": value for key, value in params.discretize.depth_check.model_dump().items()}
    with stage_run(params, stage, tags, run_params) as mlflow_run:
        seed_everything(cfg.seed, deterministic=device.type == "cpu")  # GDAS/DrNAS sample while evaluating
        genotype, gap = discretize(supernet, val_loader, device, amp=cfg.amp, genotype=selected,
                                   train_loader=train_loader, recalibration_batches=cfg.bn_recalibration_batches)
        summary = describe_genotype(genotype, out) | gap
        depth = run_depth_check(params, genotype, cfg.seed, device)
        write_json(out / "depth_check.json", depth)
        summary |= {"depth_check": depth["summary"], "depth_flagged": depth["flagged"]}
        (out / "discretize.json").write_text(json.dumps(summary, indent=2) + "\n")
        mlflow_run.log_metrics(mlflow_metrics(depth))
        mlflow_run.log_metrics({key: value for key, value in summary.items()
                                if key.startswith(("supernet_val_", "discretized_val_", "discretization_gap_"))})
        mlflow_run.log_params({"genotype": summary["genotype"]})
        mlflow_run.set_tags({"formula": summary["formula"], "equivalent_to": summary["equivalent_to"] or "none",
                             "equivalence": summary["equivalence"] or "none", "depth_check": depth["summary"]})
        mlflow_run.log_artifact(out, "discretize")
        log.info("discretized %s: %s (gap %.2f points, %.2f after BN recalibration)%s", name, summary["formula"],
                 summary["discretization_gap_top1"], summary.get("discretization_gap_top1_recalibrated", math.nan),
                 f"; {summary['equivalence']}" if summary["equivalence"] else "")
        (log.warning if depth["flagged"] else log.info)("depth check of %s: %s", name, depth["summary"])


if __name__ == "__main__":
    run(main)
