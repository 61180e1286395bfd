"""Does the short retraining budget rank activations as a long one does? (issue: "the short budget")

    python bench/budget_ranking.py [--set partial-run] [--network resnet8] [--seeds 0,1] [--long-train-size 50000]
                                   [--long-epochs 4] [--out reports/budget_ranking] [--workers 2] [--report-only]

Every activation below is retrained from scratch twice per seed, under the study's one retraining rule
(params.yaml `evaluate`: clipping, frozen searched betas, its recipe):
- short: the default budget (data.train_size images x evaluate.epochs epochs);
- long: `--long-train-size` images x `--long-epochs` epochs (50,000 x 4 = 8.3x the default's 12,000 x 2).
Both evaluate the full test set. The report ranks the activations by mean top-1 under each budget and gives
Spearman's rho between the two rankings (scipy), over the activations that trained in every run. Finished runs
are appended to runs.jsonl (a rerun skips them); the table is table.md.

Three sets of activations (`--set`):
- `partial-run` spans the range the study meets: ReLU and Swish, the two functions the default study's partial
  run found (docs/science.md), and two the legacy operators found, rewritten with GRAFS's sqrt (the worst and a
  middling one of the diagnosis);
- `reference-run`: ReLU, Swish, and the best and the worst searched function on ResNet-20 of the committed
  reference run (reports/results.md, the run of 2026-12-04: darts-simple, ReLU in disguise, and drnas-simple);
  a test keeps it equal to the committed reports;
- `reference-run-2026-12-03`: the same for the reference run of 2026-12-03 (darts-simple and gdas-complex),
  chosen by that rule before any long run: the set docs/science.md's ResNet-20 results were measured with.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from bench.diagnosis import FOUND, append_record, default_budget, read_records, with_sqrt  # noqa: E402
from pipeline.data.augment import BatchLoader  # noqa: E402
from pipeline.data.cifar import balanced_subset, load_cifar10  # noqa: E402
from pipeline.kernels.fused_genotype import fast_forward  # noqa: E402
from pipeline.space.genotype import BASELINES, Genotype  # noqa: E402
from pipeline.space.models import build_resnet  # noqa: E402
from pipeline.training.device import seed_everything  # noqa: E402
from pipeline.training.train import train_model  # noqa: E402
from pipeline.training.train_config import TrainConfig  # noqa: E402

ACTIVATIONS = {
    "relu": BASELINES["relu"],
    "swish": BASELINES["swish"],
    # The default study's two finds (docs/science.md, partial run of the GRAFS-operator default).
    "gelu|sqrt (default study)": Genotype("simple", ("gelu", "sqrt", "interp"), (None, None, 0.2304946780204773)),
    "leaky_relu (default study)": Genotype("complex", ("elu", "leaky_relu", "right", "sqrt", "leaky_relu", "right"),
                                           (None,) * 6),
    "max(elu(elu),sqrt)": with_sqrt(FOUND["max(elu(elu),sqrt)"], "grafs"),
    "asinh(max(elu,relu))|sqrt": with_sqrt(FOUND["asinh(max(elu,relu))|sqrt"], "grafs"),
    # The committed reference run's best and worst searched function on ResNet-20 (reports/results.md, 2026-12-04).
    "max(gelu,relu) (darts-simple)": Genotype("simple", ("gelu", "relu", "max"), (None,) * 3),
    "gelu|sqrt (drnas-simple)": Genotype("simple", ("gelu", "sqrt", "interp"), (None, None, 0.1389937549829483)),
    # The same for the reference run of 2026-12-03 (its reports/results.md).
    "max(gelu,leaky_relu) (darts-simple)": Genotype("simple", ("gelu", "leaky_relu", "max"), (None,) * 3),
    "elu*sigmoid(tanh(min(tanh,asinh))) (gdas-complex)": Genotype(
        "complex", ("tanh", "asinh", "min", "tanh", "elu", "sigmul"), (None,) * 6),
}
SETS = {
    "partial-run": ("relu", "swish", "gelu|sqrt (default study)", "leaky_relu (default study)",
                    "max(elu(elu),sqrt)", "asinh(max(elu,relu))|sqrt"),
    "reference-run": ("relu", "swish", "max(gelu,relu) (darts-simple)", "gelu|sqrt (drnas-simple)"),
    "reference-run-2026-12-03": ("relu", "swish", "max(gelu,leaky_relu) (darts-simple)",
                                 "elu*sigmoid(tanh(min(tanh,asinh))) (gdas-complex)"),
}
BUDGETS = ("short", "long")
DEFAULT_SOURCE = os.environ.get("ACTSEARCH_CIFAR10") or str(ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz")


def run_id(run: dict, network: str) -> str:
    """The run's key in runs.jsonl: a rerun skips it. The network is part of it, so one output folder can hold
    several networks' runs without one standing in for another."""
    return f"{network}_{run['activation']}_{run['budget']}_s{run['seed']}".replace("|", "+").replace(" ", "")


def retrain(genotype: Genotype, network: str, seed: int, budget: str, threads: int, source: str = DEFAULT_SOURCE,
            long_size: int = 50_000, long_epochs: int = 4) -> dict:
    """One retraining under params.yaml's rule: the `short` budget (its data.train_size x evaluate.epochs) or the
    `long` one (long_size images x long_epochs), the full test set."""
    torch.set_num_threads(threads)
    settings, params = default_budget()
    epochs = settings.epochs if budget == "short" else long_epochs
    size = params["data"]["train_size"] if budget == "short" else long_size
    cfg = TrainConfig(**{**settings.model_dump(), "epochs": epochs, "eval_every": epochs, "seed": seed,
                         "device": "auto"})
    data = load_cifar10(source, ROOT / params["data"]["cache_dir"])
    train = balanced_subset(data.train_labels, size, params["data"]["seed"])
    train_loader = BatchLoader(data.train_images[train], data.train_labels[train], cfg.batch_size, shuffle=True,
                               augment=True, drop_last=True, seed=seed)
    test_loader = BatchLoader(data.test_images, data.test_labels, params["evaluate"]["test_batch_size"],
                              shuffle=False, augment=False)
    seed_everything(seed, deterministic=True)
    model = build_resnet(network, genotype.factory("scalar", params["evaluate"]["train_betas"], fast_forward,
                                                   "shared"))
    result = train_model(model, train_loader, test_loader, cfg, progress=False)
    return {"network": network, "formula": genotype.formula(), "train_size": size, "epochs": epochs,
            "status": result.status, "top1": result.final["top1"],
            "seconds": sum(r["epoch_time_s"] for r in result.history)}


def train_one(run: dict, network: str, source: str, long_size: int, long_epochs: int, threads: int) -> dict:
    record = retrain(ACTIVATIONS[run["activation"]], network, run["seed"], run["budget"], threads, source, long_size,
                     long_epochs)
    return {**run, "id": run_id(run, network), **record}


def finished(records: list[dict]) -> set[str]:
    """The ids of the runs a log holds, from each record's own fields rather than its stored id: a log written
    before ids carried the network (2026-12-04) is still recognised, and a rerun into its folder skips them."""
    return {run_id(r, r["network"]) for r in records}


def selected(records: list[dict], activations, network: str) -> list[dict]:
    """The records of this set's activations on this network (an output folder may hold others)."""
    return [r for r in records if r["activation"] in activations and r["network"] == network]


def rankings(records: list[dict]) -> dict:
    """Mean top-1 per activation and budget over the runs that trained, the ranks (1 = best) and Spearman's rho
    over the activations with a trained run under both budgets."""
    means = {}
    for budget in BUDGETS:
        groups: dict[str, list[float]] = {}
        for r in records:
            if r["budget"] == budget and r["status"] == "ok":
                groups.setdefault(r["activation"], []).append(r["top1"])
        means[budget] = {a: statistics.mean(v) for a, v in groups.items()}
    common = sorted(set(means["short"]) & set(means["long"]))
    rho = p = None
    if len(common) >= 3:
        result = spearmanr([means["short"][a] for a in common], [means["long"][a] for a in common])
        rho, p = float(result.statistic), float(result.pvalue)
    ranks = {b: {a: i + 1 for i, a in enumerate(sorted(common, key=lambda a: -means[b][a]))} for b in BUDGETS}
    return {"means": means, "ranks": ranks, "activations": common, "spearman_rho": rho, "spearman_p": p}


def markdown(records: list[dict], summary: dict, activations=tuple(ACTIVATIONS)) -> str:
    counts = {}
    for r in records:
        key = (r["activation"], r["budget"])
        counts.setdefault(key, [0, 0])
        counts[key][0] += r["status"] == "ok"
        counts[key][1] += 1
    lines = ["| activation | short top-1 | rank | ok/runs | long top-1 | rank | ok/runs |", "|---|---|---|---|---|---|---|"]
    for a in activations:
        cells = []
        for b in BUDGETS:
            mean = summary["means"][b].get(a)
            ok, n = counts.get((a, b), [0, 0])
            cells += ["-" if mean is None else f"{mean:.2f}", str(summary["ranks"][b].get(a, "-")), f"{ok}/{n}"]
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    rho = summary["spearman_rho"]
    lines.append("")
    lines.append("Spearman's rho (short vs long ranking): " + ("-" if rho is None else
                 f"{rho:.3f} (p = {summary['spearman_p']:.3g}, {len(summary['activations'])} activations)"))
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--set", default="partial-run", choices=tuple(SETS), help="which activations (see above)")
    p.add_argument("--network", default="resnet8")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--long-train-size", type=int, default=50_000)
    p.add_argument("--long-epochs", type=int, default=4)
    p.add_argument("--source", default=DEFAULT_SOURCE)
    p.add_argument("--out", default=str(ROOT / "reports" / "budget_ranking"))
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--workers", type=int, default=2, help="runs in parallel")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "runs.jsonl"
    done = finished(read_records(log))
    activations = SETS[args.set]
    # Short runs first (cheap), then the long ones seed by seed: a study stopped early has a full first seed.
    todo = [{"activation": a, "budget": b, "seed": int(s)} for b in BUDGETS for s in args.seeds.split(",")
            for a in activations]
    todo = [r for r in todo if run_id(r, args.network) not in done]
    if not args.report_only and todo:
        with ProcessPoolExecutor(args.workers) as pool:
            futures = [pool.submit(train_one, r, args.network, args.source, args.long_train_size, args.long_epochs,
                                   args.threads) for r in todo]
            for future in futures:
                record = future.result()
                append_record(log, record)
                print(f"{record['id']}: {record['status']} top-1 {record['top1']:.2f} ({record['seconds']:.0f} s)",
                      flush=True)
    records = selected(read_records(log), activations, args.network)
    summary = rankings(records)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "table.md").write_text(markdown(records, summary, activations))
    print((out / "table.md").read_text())


if __name__ == "__main__":
    main()
