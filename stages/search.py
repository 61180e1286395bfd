"""Stage `search@<optimizer>-<space>-<seed>`: one-shot search of the activation cell on the search network.

Writes results/search/<optimizer>-<space>-s<seed>/: supernet.pt (for discretize: the supernet of the selected epoch and
the selected genotype), history.json and history.csv (per epoch: losses, top-1/top-5 of the supernet
(`val_top1`) and of the BN-recalibrated discretized network (`discretized_val_top1`), lr, temperature, operator
weights, entropy, betas, formula, the shrinking mask), trajectory.csv (the same trajectories as a tidy table: one
row per epoch, edge and operator) and summary.json.
A checkpoint after every epoch (checkpoints/, outside the DVC outputs) lets a killed search resume; it is
deleted once the stage has succeeded. Each epoch's headline metrics go to MLflow as it ends; the trajectories
(hundreds of numbers an epoch) go there as trajectory.csv, so that they do not bury the runs table.
"""
from __future__ import annotations

import math

from pipeline.training.device import resolve_device
from pipeline.search.loop import TIMING_KEYS, run_search, save_supernet
from pipeline.search.skips import SearchDiverged
from pipeline.study.stage_checkpoints import drop_finished_checkpoint
from stages.common import (RESULTS, checkpoint_path, log, resume_or_restart, run, search_loaders, searched_stage,
                           stage_inputs, stage_run, write_csv, write_json)

STAGE_ERRORS = (SearchDiverged,)  # user errors of this stage: one line, no traceback (stages.common.run)


def epoch_metrics(record: dict) -> dict:
    """A search history record's headline numbers as MLflow metrics (at most 16; the per-operator trajectories go to
    trajectory.csv)."""
    metrics = {key: record[key] for key in ("train_loss", "train_top1", "train_top5", "val_loss", "val_top1",
                                            "val_top5", "discretized_val_loss", "discretized_val_top1",
                                            "discretized_val_top5", "lr", "skipped_steps", "epoch_time_s",
                                            "remaining_fraction")}
    if record["temperature"] is not None:
        metrics["temperature"] = record["temperature"]
    if not math.isnan(record["arch_loss"]):  # NaN only in warm-up epochs, which take no architecture step
        metrics["arch_loss"] = record["arch_loss"]
    metrics["mean_entropy"] = sum(record["entropy"].values()) / len(record["entropy"])
    return metrics


def trajectory_rows(history: list[dict]) -> list[dict]:
    """The search's trajectories as a tidy table: per epoch, edge and operator its weight, whether progressive
    shrinking keeps it (1) or has dropped it (0), and its beta (empty for operators without one)."""
    return [{"epoch": record["epoch"], "edge": edge, "operator": name, "weight": weight,
             "kept": int(record["mask"][edge][name]), "beta": record["betas"].get(f"{edge}__{name}")}
            for record in history for edge, weights in record["operator_weights"].items()
            for name, weight in weights.items()]


def main(argv: list[str]) -> None:
    args, name, stage, params = searched_stage("search", __doc__.splitlines()[0], argv)
    cfg = params.search.config(args.optimizer, args.space, params.search_seed(args.seed), params.study.device)
    out = RESULTS / "search" / name
    out.mkdir(parents=True, exist_ok=True)
    train_loader, val_loader = search_loaders(cfg.batch_size, cfg.seed, resolve_device(cfg.device))
    tags = {"optimizer": args.optimizer, "space": args.space, "search_seed": args.seed, "network": cfg.network}
    with stage_run(params, stage, tags, {"search": cfg.model_dump()}) as mlflow_run:
        logged = set()

        def log_epoch(record: dict) -> None:
            mlflow_run.log_metrics(epoch_metrics(record), step=record["epoch"])
            mlflow_run.set_tags({"formula": record["formula"]})
            mlflow_run.log_text(record["formula"] + "\n", f"formula/epoch_{record['epoch']:03d}.txt")
            logged.add(record["epoch"])

        checkpoint = checkpoint_path(stage)
        # A checkpoint of this search on other data (data.seed, a new prepare) or other code is discarded.
        inputs = stage_inputs("search", {"optimizer": args.optimizer, "space": args.space, "seed": args.seed})
        result = resume_or_restart(lambda path: run_search(cfg, train_loader, val_loader, checkpoint_path=path,
                                                           on_epoch=log_epoch, progress=True,
                                                           checkpoint_inputs=inputs), checkpoint)
        for record in result.history:  # epochs done before a resume were logged by the killed run
            if record["epoch"] not in logged:
                log_epoch(record)
        save_supernet(result.supernet, cfg, out / "supernet.pt", result.genotype)
        # The DVC outputs hold what the inputs determine; the epochs' wall times go to the run record.
        history = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in result.history]
        write_json(out / "history.json", history)
        write_csv(out / "history.csv", history)
        record_path = RESULTS / "runs" / "search" / f"{name}.json"
        record_path.parent.mkdir(parents=True, exist_ok=True)
        write_json(record_path, {"epochs": [{"epoch": r["epoch"], **{k: r[k] for k in TIMING_KEYS}}
                                            for r in result.history],
                                 "epoch_time_s": sum(r["epoch_time_s"] for r in result.history) / len(result.history)})
        write_csv(out / "trajectory.csv", trajectory_rows(result.history))
        last = result.history[-1]
        summary = {"optimizer": args.optimizer, "space": args.space, "seed": args.seed, "network": cfg.network,
                   "genotype": result.genotype.to_dict(), "formula": result.genotype.formula(),
                   "skipped_steps": result.skipped_steps, "steps": result.steps, "epochs": cfg.epochs,
                   "final": {key: last[key] for key in ("train_top1", "train_top5", "val_loss", "val_top1",
                                                        "val_top5", "discretized_val_top1", "discretized_val_top5")},
                   "select": cfg.select, "selection": cfg.selection, "selected_epoch": result.selected_epoch,
                   "selected": {key: result.history[result.selected_epoch - 1][key]
                                for key in ("val_top1", "discretized_val_top1", "formula")},
                   "perturbation_scores": result.perturbation_scores}
        write_json(out / "summary.json", summary)
        mlflow_run.set_tags({"formula": summary["formula"], "genotype": str(result.genotype)})
        for file in ("history.json", "history.csv", "trajectory.csv", "summary.json"):
            mlflow_run.log_artifact(out / file)
        mlflow_run.log_artifact(record_path)
        mlflow_run.log_model_weights(out / "supernet.pt")
        log.info("search %s found %s at epoch %d (last epoch: val top-1 %.2f, discretized %.2f; %d skipped "
                 "steps)", name, summary["formula"], result.selected_epoch, last["val_top1"],
                 last["discretized_val_top1"], result.skipped_steps)
    drop_finished_checkpoint(checkpoint)  # under the Ray runner: kept until its dvc commit


if __name__ == "__main__":
    run(main, *STAGE_ERRORS)
