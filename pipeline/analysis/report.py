"""The study's results table and figures, from the DVC outputs of the evaluate, discretize and search stages.

Reads results/ only (never MLflow, which also holds runs of earlier parameters). Layout it expects:
- results/evaluate/<activation>/<network>/seed<k>/metrics.json and history.csv (every expected run must exist);
- results/discretize/<optimizer>-<space>/discretize.json and genotype.json (searched activations);
- results/search/<optimizer>-<space>/history.json (searched activations).
One table row per activation. Per network: test top-1 and top-5 as mean and sample std over the seeds whose
training ended "ok", the number of those seeds, the status of the others, and the steady-state training time per
epoch relative to ReLU on that network (the first epoch, which also pays compilation and warm-up, is left out).
A network on which no seed ended "ok" shows its status instead of numbers.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from pipeline.analysis.equivalence import equivalence_warning
from pipeline.space.genotype import BASELINES, Genotype
from pipeline.analysis.plots import plot_activations, plot_lines

MAX_OPS_PLOTTED = 8  # operator-weight figures show the operators that ever weighed most, one figure per edge


class ReportError(RuntimeError):
    """An expected stage output is missing or unreadable."""


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"{path} is missing: run the stage that writes it (dvc repro)") from None
    except json.JSONDecodeError as err:
        raise ReportError(f"{path} is not valid JSON ({err}); rerun the stage that writes it (dvc repro -f)") from None


def run_dir(results: Path, activation: str, network: str, seed: int) -> Path:
    return results / "evaluate" / activation / network / f"seed{seed}"


def read_runs(results: Path, activations: Sequence[str], networks: Sequence[str], seeds: Sequence[int]) -> list[dict]:
    """metrics.json of every (activation, network, seed) the params ask for."""
    return [_read_json(run_dir(results, a, n, s) / "metrics.json") for a in activations for n in networks
            for s in seeds]


def _origin_text(name: str, origin: str) -> str:
    return f"{name.split('-')[0]} + {name.split('-')[1]}" if origin == "searched" else origin


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else math.nan
    return mean, std


def _status(runs: list[dict]) -> str:
    counts = {}
    for run in runs:
        counts[run["status"]] = counts.get(run["status"], 0) + 1
    if set(counts) == {"ok"}:
        return "ok"
    return ", ".join(f"{status} {count}/{len(runs)}" for status, count in sorted(counts.items()) if status != "ok")


def _time_per_epoch(runs: list[dict]) -> float:
    """Mean steady-state seconds per epoch (first epoch left out: it also pays compilation and warm-up)."""
    times = [r["steady_epoch_time_s"] for r in runs if r["status"] != "diverged" and r["steady_epoch_time_s"]]
    return sum(times) / len(times) if times else math.nan


def results_table(runs: list[dict], origins: Mapping[str, str], networks: Sequence[str],
                  discretized: Mapping[str, dict]) -> pd.DataFrame:
    """One row per activation (in `origins` order); see the module docstring for the columns."""
    relu_time = {n: _time_per_epoch([r for r in runs if r["activation"] == "relu" and r["network"] == n])
                 for n in networks}
    rows = []
    for name, origin in origins.items():
        mine = [r for r in runs if r["activation"] == name]
        if not mine:
            raise ReportError(f"no evaluation runs of activation {name!r} were found")
        found = discretized.get(name, {})
        row = {"activation": name, "origin": _origin_text(name, origin), "formula": mine[0]["formula"],
               "equivalence": found.get("equivalence") or "",
               "supernet_val_top1": found.get("supernet_val_top1", math.nan),
               "discretization_gap": found.get("discretization_gap_top1", math.nan)}
        for network in networks:
            cell = [r for r in mine if r["network"] == network]
            ok = [r for r in cell if r["status"] == "ok"]
            for metric in ("top1", "top5"):
                row[f"{network}_{metric}_mean"], row[f"{network}_{metric}_std"] = _mean_std(
                    [r[f"test_{metric}"] for r in ok])
            row[f"{network}_seeds_ok"] = len(ok)
            row[f"{network}_seeds"] = len(cell)
            row[f"{network}_status"] = _status(cell)
            row[f"{network}_time_rel_relu"] = _time_per_epoch(cell) / relu_time[network] \
                if relu_time[network] and not math.isnan(relu_time[network]) else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _num(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _accuracy_cell(row, network: str, metric: str) -> str:
    ok, total, status = row[f"{network}_seeds_ok"], row[f"{network}_seeds"], row[f"{network}_status"]
    if ok == 0:
        return status
    mean, std = row[f"{network}_{metric}_mean"], row[f"{network}_{metric}_std"]
    spread = "" if math.isnan(std) else f" ± {std:.2f}"
    note = "" if status == "ok" else f"; {status}"
    return f"{mean:.2f}{spread} (n={ok}{note})"


def results_markdown(table: pd.DataFrame, networks: Sequence[str]) -> str:
    header = ["activation", "origin", "formula"]
    for network in networks:
        header += [f"{network} top-1", f"{network} top-5", f"{network} time/epoch vs ReLU"]
    header += ["supernet val top-1", "discretization gap", "equivalence"]
    lines = ["# Results", "",
             "Test accuracy (%) after retraining from scratch: mean ± sample std over the seeds that trained "
             "normally (n); other seeds are listed by status (diverged, failed_to_learn). Supernet val top-1 and "
             "the discretization gap (supernet minus discretized network, same weights, points) are measured on "
             "the search's architecture split. Time/epoch vs ReLU leaves out the first epoch (compilation, warm-up).",
             "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells = [row["activation"], row["origin"], f"`{row['formula']}`"]
        for network in networks:
            cells += [_accuracy_cell(row, network, "top1"), _accuracy_cell(row, network, "top5"),
                      _num(row[f"{network}_time_rel_relu"])]
        cells += [_num(row["supernet_val_top1"]), _num(row["discretization_gap"]), row["equivalence"]]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _finite(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def summary_metrics(table: pd.DataFrame, networks: Sequence[str]) -> dict:
    """The DVC metric: per activation and network the accuracies, seed counts, status and relative time."""
    summary = {}
    for _, row in table.iterrows():
        entry = {}
        for network in networks:
            entry[network] = {key: _finite(row[f"{network}_{key}"]) for key in (
                "top1_mean", "top1_std", "top5_mean", "top5_std", "seeds_ok", "seeds", "status", "time_rel_relu")}
            entry[network]["seeds_ok"], entry[network]["seeds"] = int(row[f"{network}_seeds_ok"]), int(
                row[f"{network}_seeds"])
        if row["origin"] not in ("baseline", "custom"):
            entry["supernet_val_top1"] = _finite(row["supernet_val_top1"])
            entry["discretization_gap"] = _finite(row["discretization_gap"])
        summary[row["activation"]] = entry
    return summary


def _history(results: Path, run: dict) -> pd.DataFrame:
    path = run_dir(results, run["activation"], run["network"], run["seed"]) / "history.csv"
    try:
        return pd.read_csv(path)
    except FileNotFoundError:
        raise ReportError(f"{path} is missing: rerun its evaluate stage (dvc repro)") from None


def plot_training_curves(results: Path, runs: list[dict], networks: Sequence[str], epochs: int,
                         out_dir: Path) -> list[Path]:
    """Per network: test top-1 and training loss per epoch, mean over seeds, one line per activation."""
    paths = []
    for network in networks:
        for column, label in (("test_top1", "test top-1 (%)"), ("train_loss", "training loss")):
            series = {}
            for activation in dict.fromkeys(r["activation"] for r in runs):
                curves = [_history(results, r).set_index("epoch")[column].reindex(range(1, epochs + 1))
                          for r in runs if r["activation"] == activation and r["network"] == network]
                series[activation] = pd.concat(curves, axis=1).mean(axis=1, skipna=False).tolist()
            paths.append(plot_lines(series, out_dir / f"training_{column}_{network}.png", "epoch", label,
                                    f"{network}: {label} (mean over seeds)", x_values=list(range(1, epochs + 1))))
    return paths


def plot_search(history: list[dict], name: str, out_dir: Path) -> list[Path]:
    """Operator-weight trajectories (one figure per edge) and the entropy of every edge, for one search."""
    epochs = [record["epoch"] for record in history]
    paths = []
    for edge in history[0]["operator_weights"]:
        ops = list(history[0]["operator_weights"][edge])
        peak = {op: max(record["operator_weights"][edge][op] for record in history) for op in ops}
        shown = sorted(ops, key=lambda op: -peak[op])[:MAX_OPS_PLOTTED]
        series = {op: [record["operator_weights"][edge][op] for record in history] for op in shown}
        paths.append(plot_lines(series, out_dir / f"{name}_weights_{edge}.png", "epoch", "operator weight",
                                f"{name}: edge {edge} (top {len(shown)} of {len(ops)} operators)", x_values=epochs))
    entropy = {edge: [record["entropy"][edge] for record in history] for edge in history[0]["entropy"]}
    paths.append(plot_lines(entropy, out_dir / f"{name}_entropy.png", "epoch", "normalized entropy",
                            f"{name}: entropy of the operator weights per edge", x_values=epochs))
    return paths


def write_report(results: Path, reports: Path, origins: Mapping[str, str], networks: Sequence[str],
                 seeds: Sequence[int]) -> dict:
    """Write results.csv, results.md, summary.json and figures/ into `reports`; return the summary."""
    runs = read_runs(results, list(origins), networks, seeds)
    searched = [name for name, origin in origins.items() if origin == "searched"]
    discretized = {name: _read_json(results / "discretize" / name / "discretize.json") for name in searched}
    for name, origin in origins.items():
        if origin == "custom":  # searched ones were checked by discretize; baselines are the references
            genotype = Genotype.from_dict(_read_json(run_dir(results, name, networks[0], seeds[0]) / "genotype.json"))
            discretized[name] = {"equivalence": equivalence_warning(genotype.function())}
    table = results_table(runs, origins, networks, discretized)
    reports.mkdir(parents=True, exist_ok=True)
    table.to_csv(reports / "results.csv", index=False)
    (reports / "results.md").write_text(results_markdown(table, networks))
    summary = summary_metrics(table, networks)
    (reports / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    figures = reports / "figures"
    functions = {f"{name}: {discretized[name]['formula']}":
                 Genotype.load(results / "discretize" / name / "genotype.json").function() for name in searched}
    functions |= {name: BASELINES[name].function() for name, origin in origins.items()
                  if origin == "baseline"}
    plot_activations(functions, figures / "activations.png")
    epochs = max(r["epochs"] for r in runs)
    plot_training_curves(results, runs, networks, epochs, figures)
    val_top1 = {}
    for name in searched:
        history = _read_json(results / "search" / name / "history.json")
        plot_search(history, name, figures / "search")
        val_top1[name] = [math.nan if r["val_top1"] is None else r["val_top1"] for r in history]
    if val_top1:
        plot_lines(val_top1, figures / "search_val_top1.png", "epoch", "supernet validation top-1 (%)",
                   "supernet validation top-1 per search epoch", x_values=list(range(1, len(history) + 1)))
    return summary
