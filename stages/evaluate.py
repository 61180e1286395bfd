"""Stage `evaluate-<origin>@<activation>-<network>-<seed>`: retrain a network from scratch with one activation.

The activation is a baseline (pipeline.space.genotype.BASELINES), a searched one (<optimizer>-<space>: the
genotype the select stage chose among the search seeds' functions; the stage is
evaluate-searched@<optimizer>-<space>-<network>-<seed>) or a custom one (activations/<name>.json). Writes results/evaluate/<activation>/<network>/seed<seed>/: metrics.json
(final test top-1/top-5, status ok / diverged / failed_to_learn, time per epoch, the MLflow model's URI),
history.csv (per epoch), weights.pt (state dict) and genotype.json. The MLflow run holds the network as a model
(`mlflow.pytorch.load_model`) with its signature.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
from pathlib import Path

import torch

from pipeline.analysis.layout import run_record_path
from pipeline.data.augment import BatchLoader
from pipeline.kernels.fused_genotype import fast_forward
from pipeline.study.config import Params, ParamsError, parse_selected
from pipeline.training.device import resolve_device, seed_everything
from pipeline.space.genotype import BASELINES, Genotype, GenotypeError
from pipeline.space.models import build_resnet, count_parameters
from pipeline.training.train import train_model
from pipeline.study.stage_checkpoints import drop_finished_checkpoint
from pipeline.study.tracking import model_requirements
from stages.common import (RESULTS, ROOT, checkpoint_path, load_prepared, log, resume_or_restart, run, stage_inputs,
                           stage_run, start, write_csv, write_json)

ORIGINS = ("baseline", "searched", "custom")
STAGE_ERRORS = (GenotypeError,)  # user errors of this stage: one line, no traceback (stages.common.run)


def resolve_genotype(params: Params, origin: str, activation: str) -> Genotype:
    """The genotype behind an activation name; its origin must agree with params.yaml."""
    expected = params.activations().get(activation)
    if expected != origin:
        raise ParamsError(f"params.yaml: activation {activation!r} is not a {origin} activation of this study "
                          f"(its activations: {params.activations()}); check dvc.yaml against params.yaml")
    if origin == "baseline":
        return BASELINES[activation]
    if origin == "custom":
        return Genotype.load(params.custom_path(activation))
    try:
        return Genotype.load(RESULTS / "select" / activation / "genotype.json")
    except GenotypeError as error:  # the select stage copied it: rerunning that stage rewrites it
        raise GenotypeError(f"{error}; rerun the select stage: dvc repro -f select") from None


def retraining_inputs(origin: str, activation: str, network: str, seed: int, root: Path = ROOT) -> dict[str, str]:
    """Hashes of what this retraining reads (dvc.yaml's deps of its stage: the prepared data, a searched or custom
    genotype, the code), kept in its checkpoint so that a checkpoint on other inputs is discarded, not resumed."""
    if origin == "searched":
        optimizer, space = parse_selected(activation)
        item = {"optimizer": optimizer, "space": space}
    else:
        item = {"activation": activation}
    return stage_inputs(f"evaluate-{origin}", item | {"network": network, "seed": seed}, root)


def depth_warning(activation: str, discretize_json: Path) -> str | None:
    """The discretize stage's depth check of a searched function, logged as a warning when it flagged it, before
    the retraining is spent; the function is retrained all the same (a flag is a measurement, not a verdict).
    discretize.json is read for this note only, so it is no DVC dependency of the retraining."""
    try:
        summary = json.loads(discretize_json.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if summary.get("depth_flagged"):
        log.warning("%s: the depth check %s (docs/depth_check.md); retraining it all the same", activation,
                    summary.get("depth_check"))
    return summary.get("depth_check")


def epoch_metrics(record: dict) -> dict:
    """An epoch's record as MLflow metrics, without the NaN placeholders of the test metrics that epochs without a
    test-set evaluation carry (evaluate.eval_every): MLflow would store them and tag the run `nonfinite_metrics`."""
    return {key: value for key, value in record.items()
            if key != "epoch" and not (key.startswith("test_") and math.isnan(value))}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--origin", required=True, choices=ORIGINS)
    parser.add_argument("--activation", required=True)
    parser.add_argument("--network", required=True)
    parser.add_argument("--seed", required=True, type=int)
    args = parser.parse_args(argv)
    # DVC names the stage from its matrix values: evaluate-searched@drnas-complex-resnet8-0 for drnas-complex.
    stage = f"evaluate-{args.origin}@{args.activation}-{args.network}-{args.seed}"
    params = start(stage)
    genotype = resolve_genotype(params, args.origin, args.activation)
    cfg = params.evaluate.train_config(args.seed, params.study.device)
    device = resolve_device(cfg.device)
    data = load_prepared()
    train_loader = BatchLoader(data["train_images"], data["train_labels"], cfg.batch_size, shuffle=True,
                               augment=True, drop_last=True, device=device, seed=args.seed)
    test_loader = BatchLoader(data["test_images"], data["test_labels"], params.evaluate.test_batch_size,
                              shuffle=False, augment=False, device=device)
    out = RESULTS / "evaluate" / args.activation / args.network / f"seed{args.seed}"
    out.mkdir(parents=True, exist_ok=True)
    genotype.save(out / "genotype.json")
    formula = genotype.formula()
    tags = {"activation": args.activation, "origin": args.origin, "network": args.network, "seed": args.seed,
            "formula": formula}
    if args.origin == "searched":  # the select stage's copy of the chosen seed's discretize.json
        tags["optimizer"], tags["space"] = parse_selected(args.activation)
        chosen = RESULTS / "select" / args.activation / "discretize.json"
        tags["depth_check"] = depth_warning(args.activation, chosen)
        tags["search_seed"] = json.loads(chosen.read_text()).get("search_seed") if chosen.is_file() else None
    # One rule for every activation (docs/science.md): the same clipping (evaluate.grad_clip) for all; searched betas
    # frozen by default, and when trained, held within the search's bound, so retraining stays in the search's world.
    beta_bound = params.search.beta_clamp if params.evaluate.train_betas else None
    run_params = {"train": cfg.model_dump(), "beta_mode": params.evaluate.beta_mode, "betas": params.evaluate.betas,
                  "train_betas": params.evaluate.train_betas, "beta_bound": beta_bound, "genotype": genotype.to_dict()}
    with stage_run(params, stage, tags, run_params) as mlflow_run:
        def log_epoch(record: dict) -> None:
            mlflow_run.log_metrics(epoch_metrics(record), step=record["epoch"])

        inputs = retraining_inputs(args.origin, args.activation, args.network, args.seed)

        def train(path):
            seed_everything(args.seed, deterministic=device.type == "cpu")  # the initial weights depend on it
            model = build_resnet(args.network, genotype.factory(params.evaluate.beta_mode, params.evaluate.train_betas,
                                                                fast_forward, params.evaluate.betas, beta_bound))
            meta = {"activation": args.activation, "network": args.network, "genotype": genotype.to_dict(),
                    "inputs": inputs}  # a checkpoint on other data, genotype or code is discarded
            return model, train_model(model, train_loader, test_loader, cfg, checkpoint_path=path,
                                      on_epoch=log_epoch, checkpoint_meta=meta)

        checkpoint = checkpoint_path(stage)
        model, result = resume_or_restart(train, checkpoint)
        torch.save(model.state_dict(), out / "weights.pt")
        # The DVC outputs hold what the inputs determine; wall times and the model's URI go to the run record.
        write_csv(out / "history.csv", [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in result.history])
        times = [record["epoch_time_s"] for record in result.history]
        steady = times[1:] or times  # the first epoch also pays one-time costs (kernel compilation, warm-up)
        metrics = {"activation": args.activation, "origin": args.origin, "network": args.network,
                   "seed": args.seed, "formula": formula, "status": result.status,
                   "test_top1": result.final["top1"], "test_top5": result.final["top5"],
                   "test_loss": result.final["loss"], "epochs": cfg.epochs,
                   "epochs_run": len(result.history), "diverged_epoch": result.diverged_epoch,
                   "parameters": count_parameters(model)}
        write_json(out / "metrics.json", metrics)
        # The network as an MLflow model (mlflow.pytorch.load_model(model_uri)), on the CPU so that it loads
        # anywhere; two test images are the input example from which MLflow infers the signature.
        example = next(iter(test_loader))[0][:2].cpu().numpy()
        record = {"epoch_time_s": result.epoch_time_s, "steady_epoch_time_s": sum(steady) / len(steady),
                  "epoch_times_s": times,
                  "model_uri": mlflow_run.log_model(copy.deepcopy(model).cpu().eval(), "network", example,
                                                    [str(ROOT / "pipeline")], model_requirements())}
        record_path = run_record_path(RESULTS, args.activation, args.network, args.seed)
        record_path.parent.mkdir(parents=True, exist_ok=True)
        write_json(record_path, record)
        mlflow_run.log_metrics({"final_test_top1": result.final["top1"], "final_test_top5": result.final["top5"],
                                "mean_epoch_time_s": result.epoch_time_s})
        mlflow_run.set_tags({"status": result.status})
        for file in (out / "metrics.json", out / "history.csv", out / "genotype.json", record_path):
            mlflow_run.log_artifact(file)
        log.info("%s on %s, seed %d: %s, test top-1 %.2f", args.activation, args.network, args.seed,
                 result.status, result.final["top1"])
    drop_finished_checkpoint(checkpoint)  # under the Ray runner: kept until its dvc commit


if __name__ == "__main__":
    run(main, *STAGE_ERRORS)
