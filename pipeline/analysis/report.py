"""The study's results report, from the DVC outputs of the evaluate, discretize and search stages.

Reads results/ only (never MLflow, which also holds runs of earlier parameters). Layout it expects:
- results/evaluate/<activation>/<network>/seed<k>/metrics.json, history.csv and genotype.json (every expected run);
- results/select/<optimizer>-<space>/selection.json, discretize.json and genotype.json (the retrained searched
  activation of each optimizer x space: the select stage's choice among its search seeds, all of them listed);
- results/search/<optimizer>-<space>-s<seed>/summary.json and history.json (the chosen seed's search);
- results/runs/evaluate/<activation>/<network>/seed<k>.json, where present: what differs between equal runs (wall
  times, the MLflow model URI), kept beside the DVC outputs so that those are the same for the same inputs.
Writes results.csv (every number, pipeline.analysis.table), results.md (the ranked table with verdicts, the rank
transfer and the per-search summary, pipeline.analysis.markdown), summary.json (headline numbers only, the DVC
metric), figures/ and curves/ (tidy CSV for DVC's x/y plots, pipeline.analysis.curves).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from pipeline.analysis.curves import retraining_curves, search_curves
from pipeline.analysis.equivalence import equivalence_warning
from pipeline.analysis.known_activations import KNOWN_ACTIVATIONS
from pipeline.analysis.layout import run_dir, run_record_path
from pipeline.analysis.markdown import results_markdown
from pipeline.analysis.plots import plot_lines
from pipeline.analysis.stats import spearman, verdict_class
from pipeline.analysis.table import deepest, by_depth, results_table, search_summary, transfer_table
from pipeline.analysis.verdict_plots import plot_rank_transfer, plot_search_vs_retrained, plot_verdicts
from pipeline.space.genotype import RELU, SWISH, Genotype

log = logging.getLogger(__name__)
MAX_OPS_PLOTTED = 8  # operator-weight figures show the operators that ever weighed most, one figure per edge
SEARCH_SIGNALS = ("supernet_val_top1", "discretized_val_top1")


class ReportError(RuntimeError):
    """An expected stage output is missing or unreadable."""


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"{path} is missing: run the stage that writes it (dvc repro)") from None
    except json.JSONDecodeError as err:
        raise ReportError(f"{path} is not valid JSON ({err}); rerun the stage that writes it (dvc repro -f)") from None


def read_runs(results: Path, activations: Sequence[str], networks: Sequence[str], seeds: Sequence[int]) -> list[dict]:
    """metrics.json of every (activation, network, seed) the params ask for, with its run record's keys where
    there is one (a run record is optional: outputs pulled from a DVC remote come without)."""
    runs, missing = [], []
    for a in activations:
        for n in networks:
            for s in seeds:
                record = run_record_path(results, a, n, s)
                if not record.is_file():
                    missing.append(record)
                runs.append(_read_json(run_dir(results, a, n, s) / "metrics.json")
                            | (_read_json(record) if record.is_file() else {}))
    if missing:  # the table then has no time column for those runs, and no model URI to register
        log.warning("%d of %d retrainings have no run record (e.g. %s): their times are left out of the report",
                    len(missing), len(runs), missing[0])
    return runs


def _genotype(path: Path) -> Genotype:
    try:
        return Genotype.load(path)
    except ValueError as error:
        raise ReportError(f"{error}; rerun the stage that writes it (dvc repro)") from None


def _finite(value, digits: int | None = None):
    """None for a missing number (JSON has no NaN); rounded to `digits` decimals if given, for a readable metric."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(float(value), digits) if digits is not None else value


def summary_metrics(table: pd.DataFrame, networks: Sequence[str], searches: pd.DataFrame) -> dict:
    """The DVC metric, headline numbers only (results.csv has the rest), so that `dvc exp show` fits a screen:
    the ranking network, per activation its mean top-1 there, difference to ReLU, Holm-corrected p, verdict and
    failures over all networks; per optimizer x space its search seeds, distinct functions, depth-check flags and
    how many retrained functions came within 1 point of ReLU."""
    network = deepest(networks)
    activations = {}
    for _, row in table.iterrows():
        activations[row["activation"]] = {
            "top1": _finite(row[f"{network}_top1_mean"], 3), "vs_relu": _finite(row[f"{network}_vs_relu_diff"], 3),
            "p_vs_relu": _finite(row[f"{network}_vs_relu_p_holm"], 5),
            "verdict": row[f"{network}_verdict_vs_relu"], "failures": int(row["failures"]),
            "seeds": int(row["seeds"]), "rank": int(row["rank"])}
        if not math.isnan(row["search_skipped_steps"]):  # searched functions: steps their search skipped
            activations[row["activation"]]["skipped_steps"] = int(row["search_skipped_steps"])
    summary = {"network": network, "activations": activations}
    if len(searches):
        summary["searches"] = {f"{s['optimizer']}-{s['space']}": {
            "search_seeds": int(s["search_seeds"]), "distinct_functions": _finite(s["distinct_functions"]),
            "depth_flagged": _finite(s["depth_flagged"]), "within_1_point_of_relu": int(s["within_1_point_of_relu"])}
            for _, s in searches.iterrows()}
    return summary


def _history(results: Path, run: dict) -> pd.DataFrame:
    path = run_dir(results, run["activation"], run["network"], run["seed"]) / "history.csv"
    try:
        return pd.read_csv(path)
    except FileNotFoundError:
        raise ReportError(f"{path} is missing: rerun its evaluate stage (dvc repro)") from None


def plot_training_curves(results: Path, runs: list[dict], networks: Sequence[str], epochs: int,
                         out_dir: Path, suffix: str = ".png") -> list[Path]:
    """Per network: test top-1 and training loss per epoch, mean over seeds, one line per activation."""
    paths = []
    for network in networks:
        for column, label in (("test_top1", "test top-1 (%)"), ("train_loss", "training loss")):
            series = {}
            for activation in dict.fromkeys(r["activation"] for r in runs):
                curves = [_history(results, r).set_index("epoch")[column].reindex(range(1, epochs + 1))
                          for r in runs if r["activation"] == activation and r["network"] == network]
                series[activation] = pd.concat(curves, axis=1).mean(axis=1, skipna=False).tolist()
            paths.append(plot_lines(series, out_dir / f"training_{column}_{network}{suffix}", "epoch", label,
                                    f"{network}: {label} (mean over seeds)", x_values=list(range(1, epochs + 1))))
    return paths


def plot_search(history: list[dict], name: str, out_dir: Path, suffix: str = ".png") -> list[Path]:
    """Operator-weight trajectories (one figure per edge) and the entropy of every edge, for one search."""
    epochs = [record["epoch"] for record in history]
    paths = []
    for edge in history[0]["operator_weights"]:
        ops = list(history[0]["operator_weights"][edge])
        peak = {op: max(record["operator_weights"][edge][op] for record in history) for op in ops}
        shown = sorted(ops, key=lambda op: -peak[op])[:MAX_OPS_PLOTTED]
        series = {op: [record["operator_weights"][edge][op] for record in history] for op in shown}
        paths.append(plot_lines(series, out_dir / f"{name}_weights_{edge}{suffix}", "epoch", "operator weight",
                                f"{name}: edge {edge} (top {len(shown)} of {len(ops)} operators)", x_values=epochs))
    entropy = {edge: [record["entropy"][edge] for record in history] for edge in history[0]["entropy"]}
    paths.append(plot_lines(entropy, out_dir / f"{name}_entropy{suffix}", "epoch", "normalized entropy",
                            f"{name}: entropy of the operator weights per edge", x_values=epochs))
    return paths


def plot_verdict_figures(table: pd.DataFrame, transfer: pd.DataFrame, genotypes: Mapping[str, Genotype],
                         networks: Sequence[str], figures: Path, suffix: str = ".png") -> list[Path]:
    """activations (searched functions by verdict beside ReLU, Swish, GELU), search_vs_retrained (when there are
    searched functions) and rank_transfer, each a file `suffix` names the format of."""
    network = deepest(networks)
    rows = table.set_index("activation")
    kinds = {name: verdict_class(rows.loc[name, f"{network}_verdict_vs_relu"]) for name in rows.index}
    searched = rows.index[rows["optimizer"].notna()]
    references = {"ReLU": RELU.function(), "Swish": SWISH.function(), "GELU": KNOWN_ACTIVATIONS["gelu"]}
    paths = [plot_verdicts({name: (genotypes[name].function(), kinds[name]) for name in searched}, references,
                           figures / f"activations{suffix}")]
    points = [{"name": name, "kind": kinds[name], "top1": rows.loc[name, f"{network}_top1_mean"]}
              | {signal: rows.loc[name, signal] for signal in SEARCH_SIGNALS} for name in searched]
    correlations = {signal: spearman([p[signal] for p in points], [p["top1"] for p in points])
                    for signal in SEARCH_SIGNALS if any(math.isfinite(p[signal]) for p in points)}
    if correlations:
        relu_top1 = rows.loc["relu", f"{network}_top1_mean"] if "relu" in rows.index else None
        paths.append(plot_search_vs_retrained(points, network, relu_top1, correlations,
                                              figures / f"search_vs_retrained{suffix}"))
    ordered = by_depth(networks)
    ranks = {row["activation"]: [int(row[f"rank_{n}"]) for n in ordered] for _, row in transfer.iterrows()}
    styles = {name: "reference" if rows.loc[name, "origin"] == "baseline" else kinds[name] for name in ranks}
    paths.append(plot_rank_transfer(ranks, styles, ordered, figures / f"rank_transfer{suffix}"))
    return paths


def write_report(results: Path, reports: Path, origins: Mapping[str, str], networks: Sequence[str],
                 seeds: Sequence[int], search_network: str | None = None, figure_format: str = "png") -> dict:
    """Write results.csv, results.md, summary.json and figures/ (as `figure_format`: png, pdf or svg) into
    `reports`; return the summary."""
    runs = read_runs(results, list(origins), networks, seeds)
    searched = [name for name, origin in origins.items() if origin == "searched"]
    # A retrained searched activation <optimizer>-<space> is the select stage's choice among the search seeds.
    selections = {name: _read_json(results / "select" / name / "selection.json") for name in searched}
    discretized = {name: _read_json(results / "select" / name / "discretize.json") for name in searched}
    search_dirs = {name: results / "search" / f"{name}-s{selections[name]['search_seed']}" for name in searched}
    for name in searched:  # the search's skipped (non-finite) steps go into the table beside its numbers
        search = _read_json(search_dirs[name] / "summary.json")
        discretized[name] = {**discretized[name], "search_skipped_steps": search["skipped_steps"],
                             "search_steps": search["steps"]}
    genotypes = {name: _genotype(results / "select" / name / "genotype.json") for name in searched}
    for name, origin in origins.items():
        if origin != "searched":
            genotypes[name] = _genotype(run_dir(results, name, networks[0], seeds[0]) / "genotype.json")
        if origin == "custom":  # searched ones were checked by discretize; baselines are the references
            discretized[name] = {"equivalence": equivalence_warning(genotypes[name].function())}
    try:
        table = results_table(runs, origins, networks, discretized,
                              {name: genotype.formula() for name, genotype in genotypes.items()})
    except ValueError as error:
        raise ReportError(str(error)) from None
    transfer = transfer_table(table, networks, search_network)
    searches = search_summary(table, networks, selections)
    reports.mkdir(parents=True, exist_ok=True)
    table.to_csv(reports / "results.csv", index=False)
    (reports / "results.md").write_text(results_markdown(table, networks, transfer, searches, selections))
    summary = summary_metrics(table, networks, searches)
    (reports / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    figures, suffix = reports / "figures", f".{figure_format}"
    plot_verdict_figures(table, transfer, genotypes, networks, figures, suffix)
    epochs = max(r["epochs"] for r in runs)
    plot_training_curves(results, runs, networks, epochs, figures, suffix)
    retraining_curves(runs, lambda run: _history(results, run), reports / "curves")
    val_top1, histories = {}, {}
    for name in searched:
        history = histories[name] = _read_json(search_dirs[name] / "history.json")
        plot_search(history, name, figures / "search", suffix)
        val_top1[name] = [math.nan if r["val_top1"] is None else r["val_top1"] for r in history]
    search_curves(histories, reports / "curves")
    if val_top1:
        plot_lines(val_top1, figures / f"search_val_top1{suffix}", "epoch", "supernet validation top-1 (%)",
                   "supernet validation top-1 per search epoch", x_values=list(range(1, len(history) + 1)))
    return summary
