"""Stage `aggregate`: the results table, the DVC metric and the figures, from the other stages' DVC outputs.

Writes reports/results.csv (every number), reports/results.md (ranked table with verdicts against ReLU and Swish,
rank transfer across networks, per-search summary), reports/summary.json (the DVC metric: headline numbers only)
and reports/figures/ (declared as DVC plots; PNG, PDF or SVG as report.figure_format says): activations (searched
functions by verdict beside ReLU, Swish and GELU), search_vs_retrained, rank_transfer, training curves per network,
supernet validation top-1 and operator-weight / entropy trajectories of each search, and reports/curves/ (tidy
CSV, one curve per file, declared as DVC x/y plots). Reads results/, never MLflow (which also holds runs of earlier
parameters); the MLflow run of this stage receives the table and the figures.
"""
from __future__ import annotations

import argparse

from pipeline.analysis.report import ReportError, read_runs, write_report
from stages.common import RESULTS, ROOT, log, run, stage_run, start

STAGE = "aggregate"
REPORTS = ROOT / "reports"


def numbers_only(tree: dict) -> dict:
    """The summary without its strings and nulls (MLflow metrics are numbers)."""
    kept = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            kept[key] = numbers_only(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            kept[key] = value
    return kept


class RegistrationError(RuntimeError):
    """The best searched network cannot be registered although the study says it trained normally."""


def register_best_searched(mlflow_run, summary: dict, origins: dict, seeds, name: str) -> str | None:
    """Register the retrained network of the best searched activation (mean top-1 on the summary's ranking
    network, its best seed) in the MLflow Model Registry, with its formula, numbers and verdict as tags; returns
    the registered version (None with MLflow off, or when no searched activation trained normally).
    `summary` is write_report's: {"network": ..., "activations": {name: {"top1": ..., "verdict": ...}}, ...}."""
    network, activations = summary["network"], summary["activations"]
    searched = [activation for activation, origin in origins.items() if origin == "searched"]
    missing = [activation for activation in searched if activation not in activations]
    if missing:  # the report and the study disagree: registering anything would be a guess
        raise RegistrationError(f"the report has no row for the searched activations {missing}; rerun "
                                f"`dvc repro aggregate`")
    ranked = [(activations[a]["top1"], a) for a in searched if activations[a]["top1"] is not None]
    if not ranked:
        if searched:
            log.warning("no searched activation trained normally on %s: nothing to register", network)
        return None
    activation = max(ranked)[1]
    if not mlflow_run.enabled:
        log.info("MLflow is off (study.mlflow): %s, the best searched activation, is not registered", activation)
        return None
    runs = read_runs(RESULTS, [activation], [network], seeds)  # with their run records: the model URIs
    best = max((run for run in runs if run["status"] == "ok" and run.get("model_uri")),
               key=lambda run: run["test_top1"], default=None)
    if best is None:
        raise RegistrationError(f"{activation} ranks best among the searched activations on {network}, yet none of "
                                f"its seeds {list(seeds)} has a normal run with a logged model (model_uri in "
                                f"results/runs/evaluate); rerun its evaluate stages with MLflow on (dvc repro -f)")
    entry = activations[activation]
    tags = {"activation": activation, "formula": best["formula"], "network": network, "seed": best["seed"],
            "test_top1": best["test_top1"], "top1_mean": entry["top1"], "verdict": entry["verdict"]}
    version = mlflow_run.register_model(best["model_uri"], name, tags)
    log.info("registered %s (%s on %s, seed %s) as MLflow model %s version %s", activation, best["formula"],
             network, best["seed"], name, version)
    return version


def main(argv: list[str]) -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    params = start(STAGE)
    origins = params.activations()
    networks, seeds = params.evaluate.networks, params.evaluate.seeds
    with stage_run(params, STAGE, {}, {"activations": list(origins), "networks": list(networks),
                                       "seeds": list(seeds)}) as mlflow_run:
        try:
            summary = write_report(RESULTS, REPORTS, origins, networks, seeds, params.search.network,
                                   params.report.figure_format)
        except ReportError as error:
            raise SystemExit(f"error: {error}") from None
        mlflow_run.log_metrics(numbers_only(summary))
        mlflow_run.set_tags({f"verdict.{name}": entry["verdict"] for name, entry in summary["activations"].items()})
        for file in ("results.csv", "results.md", "summary.json"):
            mlflow_run.log_artifact(REPORTS / file)
        mlflow_run.log_artifact(REPORTS / "figures")
        try:
            register_best_searched(mlflow_run, summary, origins, seeds, f"{params.study.experiment}-best-searched")
        except RegistrationError as error:
            raise SystemExit(f"error: {error}") from None
        log.info("results table:\n%s", (REPORTS / "results.md").read_text())


if __name__ == "__main__":
    run(main)
