"""Why do the found functions break on ResNet-20? A factorial retraining of the functions the legacy operators found.

    python bench/diagnosis.py [--network resnet20] [--seeds 0,1,2] [--out reports/diagnosis] [--threads 1]
                              [--workers 2] [--report-only]

Three factors, each at two levels, crossed for every found function (docs/science.md):
- sqrt: the legacy `sqrt_ramp` (slope 100 on [0, 1e-4]) | GRAFS's `sqrt(max(x, 1e-3))`;
- clip: no gradient clipping | clipping at 5 (the same for every activation, ReLU and Swish included);
- betas: trained by the retraining SGD with no bound (the old rule) | frozen at their searched values.
Every run is the default retraining budget of params.yaml's `evaluate` section (the study's train subset, the
full test set), on the given network, and logs the global gradient norm of every step. Each finished run is
appended to runs.jsonl (a rerun skips what is there), its step norms to norms/<run>.csv; the table is
table.md. ReLU and Swish are run under both clip levels (they have no sqrt and no betas).
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402

from pipeline.data.augment import BatchLoader  # noqa: E402
from pipeline.data.cifar import balanced_subset, load_cifar10  # noqa: E402
from pipeline.kernels.fused_genotype import fast_forward  # noqa: E402
from pipeline.space.genotype import BASELINES, Genotype  # noqa: E402
from pipeline.space.models import build_resnet  # noqa: E402
from pipeline.training.device import seed_everything  # noqa: E402
from pipeline.training.train import train_model  # noqa: E402
from pipeline.training.train_config import TrainConfig, TrainSettings  # noqa: E402

# The four functions the legacy operators found (two runs of the default study, issue text and README), written
# with the legacy operators they were found with.
FOUND = {
    "relu|sqrt": Genotype("simple", ("relu", "sqrt_ramp", "interp_lin"), (None, None, 0.6222)),
    "asinh(max(elu,relu))|sqrt": Genotype("complex", ("elu", "relu", "max", "asinh", "sqrt_ramp", "interp_lin"),
                                          (None, None, None, None, None, 0.5455)),
    "gelu|sqrt": Genotype("simple", ("gelu", "sqrt_ramp", "interp_lin"), (None, None, 0.6035)),
    "max(elu(elu),sqrt)": Genotype("complex", ("elu", "identity", "left", "elu", "sqrt_ramp", "max"),
                                   (None,) * 6),
}
SQRT_LEVELS = {"ramp": "sqrt_ramp", "grafs": "sqrt"}
CLIP_LEVELS = {"none": None, "5": 5.0}
BETA_LEVELS = ("trained", "frozen")


def with_sqrt(genotype: Genotype, level: str) -> Genotype:
    """The genotype with its square root replaced by the `level` definition; every other operator kept."""
    ops = tuple(SQRT_LEVELS[level] if name in SQRT_LEVELS.values() else name for name in genotype.ops)
    return Genotype(genotype.space, ops, genotype.betas)


def design(seeds: list[int]) -> list[dict]:
    """Every run: each found function in every cell of sqrt x clip x betas, and the baselines under both clips."""
    runs = []
    for (name, _), sqrt, clip, betas, seed in itertools.product(FOUND.items(), SQRT_LEVELS, CLIP_LEVELS,
                                                                BETA_LEVELS, seeds):
        runs.append({"function": name, "sqrt": sqrt, "clip": clip, "betas": betas, "seed": seed})
    for name, clip, seed in itertools.product(BASELINES, CLIP_LEVELS, seeds):
        runs.append({"function": name, "sqrt": "-", "clip": clip, "betas": "-", "seed": seed})
    return runs


# The order runs are made in, so that a study stopped early has the most telling cells of every function: the old
# world (ramp sqrt, no clipping, trained betas) and the new one (GRAFS's sqrt, clipping, frozen betas), then each
# single change from the old world, then the other cells.
CELL_ORDER = [("ramp", "none", "trained"), ("grafs", "5", "frozen"), ("grafs", "none", "trained"),
              ("ramp", "5", "trained"), ("ramp", "none", "frozen"), ("grafs", "5", "trained"),
              ("grafs", "none", "frozen"), ("ramp", "5", "frozen")]


def cell_priority(run: dict) -> int:
    key = (run["sqrt"], run["clip"], run["betas"])
    return CELL_ORDER.index(key) if key in CELL_ORDER else (0 if run["clip"] == "none" else 1)


def run_id(run: dict) -> str:
    return "{function}_sqrt-{sqrt}_clip-{clip}_betas-{betas}_s{seed}".format(**run).replace("|", "+")


def genotype_of(run: dict) -> Genotype:
    if run["function"] in BASELINES:
        return BASELINES[run["function"]]
    return with_sqrt(FOUND[run["function"]], run["sqrt"])


def default_budget() -> tuple[TrainSettings, dict]:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    recipe = {k: v for k, v in params["evaluate"].items() if k in TrainSettings.model_fields}
    return TrainSettings(**recipe), params


def load_data(params: dict, source: str):
    data = load_cifar10(source, ROOT / params["data"]["cache_dir"])
    train = balanced_subset(data.train_labels, params["data"]["train_size"], params["data"]["seed"])
    return data.train_images[train], data.train_labels[train], data.test_images, data.test_labels


def train_one(run: dict, network: str, source: str, out: Path, threads: int) -> dict:
    torch.set_num_threads(threads)
    settings, params = default_budget()
    cfg = TrainConfig(**{**settings.model_dump(), "grad_clip": CLIP_LEVELS[run["clip"]], "seed": run["seed"],
                         "device": "auto"})
    train_x, train_y, test_x, test_y = load_data(params, source)
    train_loader = BatchLoader(train_x, train_y, cfg.batch_size, shuffle=True, augment=True, drop_last=True,
                               seed=run["seed"])
    test_loader = BatchLoader(test_x, test_y, params["evaluate"]["test_batch_size"], shuffle=False, augment=False)
    genotype = genotype_of(run)
    seed_everything(run["seed"], deterministic=True)
    model = build_resnet(network, genotype.factory("scalar", run["betas"] == "trained", fast_forward, "shared"))
    norms: list[float] = []
    result = train_model(model, train_loader, test_loader, cfg, progress=False,
                         on_step=lambda step, norm: norms.append(norm))
    (out / "norms").mkdir(parents=True, exist_ok=True)
    (out / "norms" / f"{run_id(run)}.csv").write_text("step,grad_norm\n" + "".join(
        f"{i},{v!r}\n" for i, v in enumerate(norms)))
    finite = sorted(v for v in norms if v == v and v != float("inf"))
    betas = {name: p.detach().flatten().tolist() for name, p in model.named_parameters() if "beta" in name}
    return {**run, "id": run_id(run), "network": network, "formula": genotype.formula(),
            "status": result.status, "top1": result.final["top1"], "epochs_run": len(result.history),
            "grad_norm_median": finite[len(finite) // 2] if finite else None,
            "grad_norm_max": max(norms) if norms else None, "steps": len(norms),
            "final_betas": {k: v[:3] for k, v in list(betas.items())[:3]}}


def read_records(path: Path) -> list[dict]:
    """A runs log (one JSON record per line, appended as runs finish); empty when there is none yet."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def append_record(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def cell_rows(records: list[dict]) -> list[dict]:
    """One row per (function, sqrt, clip, betas): mean top-1 over the seeds that trained, failures counted."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["function"], r["sqrt"], r["clip"], r["betas"]), []).append(r)
    rows = []
    for (function, sqrt, clip, betas), runs in sorted(groups.items()):
        ok = [r["top1"] for r in runs if r["status"] == "ok"]
        rows.append({"function": function, "sqrt": sqrt, "clip": clip, "betas": betas, "seeds": len(runs),
                     "ok": len(ok), "diverged": sum(r["status"] == "diverged" for r in runs),
                     "top1_mean": statistics.mean(ok) if ok else None,
                     "top1_sd": statistics.stdev(ok) if len(ok) > 1 else None,
                     "grad_norm_max": max(r["grad_norm_max"] or 0 for r in runs),
                     "grad_norm_median": statistics.median(r["grad_norm_median"] or 0 for r in runs)})
    return rows


def markdown(rows: list[dict]) -> str:
    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = ["| function | sqrt | clip | betas | ok/seeds | diverged | top-1 mean | sd | median |g| | max |g| |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['function']} | {r['sqrt']} | {r['clip']} | {r['betas']} | {r['ok']}/{r['seeds']} | "
                     f"{r['diverged']} | {num(r['top1_mean'], '.2f')} | {num(r['top1_sd'], '.2f')} | "
                     f"{num(r['grad_norm_median'], '.3g')} | {num(r['grad_norm_max'], '.3g')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--network", default="resnet20")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--source", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))
    p.add_argument("--out", default=str(ROOT / "reports" / "diagnosis"))
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--workers", type=int, default=2, help="runs in parallel")
    p.add_argument("--only", default="", help="comma-separated functions to run (default: all)")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "runs.jsonl"
    done = {r["id"] for r in read_records(log)}
    only = set(filter(None, args.only.split(",")))
    todo = [r for r in design([int(s) for s in args.seeds.split(",")])
            if run_id(r) not in done and (not only or r["function"] in only)]
    if not args.report_only and todo:
        todo.sort(key=lambda r: (r["seed"], cell_priority(r)))
        with ProcessPoolExecutor(args.workers) as pool:
            futures = [pool.submit(train_one, r, args.network, args.source, out, args.threads) for r in todo]
            for future in futures:
                record = future.result()
                append_record(log, record)
                print(f"{record['id']}: {record['status']} top-1 {record['top1']:.2f} max |g| "
                      f"{record['grad_norm_max']:.3g}", flush=True)
    records = read_records(log)
    (out / "table.md").write_text(markdown(cell_rows(records)))
    print((out / "table.md").read_text())


if __name__ == "__main__":
    main()
