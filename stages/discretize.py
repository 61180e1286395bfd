"""Stage `discretize@<optimizer>-<space>-<seed>`: the searched supernet -> one concrete activation function.

Writes results/discretize/<optimizer>-<space>-s<seed>/: genotype.json (what evaluate retrains), formula.txt/.tex,
activation.png (beside ReLU and Swish) and discretize.json (equivalence warning, validation top-1/top-5 of the
supernet and of the discretized network on the architecture split, and the discretization gap, with the
supernet's BatchNorm statistics and after recalibrating them on training batches). The genotype is the one the
search selected (search.select, search.selection).
"""
from __future__ import annotations

import json
import math

from pipeline.training.device import resolve_device, seed_everything
from pipeline.analysis.describe import describe_genotype
from pipeline.search.discretize import discretize
from pipeline.search.loop import load_selected_genotype, load_supernet
from stages.common import RESULTS, log, run, search_loaders, searched_stage, stage_run


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
    with stage_run(params, stage, tags, {"discretize.batch_size": params.discretize.batch_size}) as mlflow_run:
        seed_everything(cfg.seed, deterministic=device.type == "cpu")  # GDAS/DrNAS sample while evaluating
        genotype, gap = discretize(supernet, val_loader, device, amp=cfg.amp, genotype=selected,
                                   train_loader=train_loader, recalibration_batches=cfg.bn_recalibration_batches)
        summary = describe_genotype(genotype, out) | gap
        (out / "discretize.json").write_text(json.dumps(summary, indent=2) + "\n")
        mlflow_run.log_metrics({key: value for key, value in summary.items()
                                if key.startswith(("supernet_val_", "discretized_val_", "discretization_gap_"))})
        mlflow_run.log_params({"genotype": summary["genotype"]})
        mlflow_run.set_tags({"formula": summary["formula"], "equivalent_to": summary["equivalent_to"] or "none",
                             "equivalence": summary["equivalence"] or "none"})
        mlflow_run.log_artifact(out, "discretize")
        log.info("discretized %s: %s (gap %.2f points, %.2f after BN recalibration)%s", name, summary["formula"],
                 summary["discretization_gap_top1"], summary.get("discretization_gap_top1_recalibrated", math.nan),
                 f"; {summary['equivalence']}" if summary["equivalence"] else "")


if __name__ == "__main__":
    run(main)
