"""Why do the found functions break on ResNet-20? A factorial retraining of the functions the legacy operators found.

    python bench/diagnosis.py [--network resnet20] [--seeds 0,1,2] [--out reports/diagnosis] [--threads 1]
                              [--workers 2] [--report-only]

Three factors, each at two levels, crossed for every found function (docs/science.md):
- sqrt: the legacy `sqrt_ramp` (slope 100 on [0, 1e-4]) | GRAFS's `sqrt(max(x, 1e-3))`;
- clip: no gradient clipping | clipping at 5 (the same for every activation, ReLU and Swish included);
- betas: trained by the retraining SGD with no bound (the old rule) | frozen at their searched values.
Every run is the default retraining budget of params.yaml's `evaluate` section (the study's train subset, the
full test set), on the given network, and logs the global gradient norm of every step. Each finished run is
appended to runs.jsonl (a rerun skips what is there), its step norms to norms/<run>.csv; the tables are
table.md (one row per cell, with the paired difference from ReLU) and effects.md (each factor's paired effect).
ReLU and Swish are run under both clip levels (they have no sqrt and no betas); a function without betas has one
betas level, "-".

A clip-none run whose clip-5 twin (same function, sqrt, betas and seed) never reached the clip is not trained
again: clipping then multiplies every gradient by exactly 1.0, so the two runs are the same computation, bit for
bit (tests/test_diagnosis.py trains both ways and compares). Its record is the twin's, marked `derived_from`.
"""
from __future__ import annotations

import argparse
import collections
import itertools
import json
import math
import statistics
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402
from scipy import stats  # noqa: E402

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


def beta_levels(genotype: Genotype) -> tuple[str, ...]:
    """Trained and frozen, or "-" alone for a function without betas (the two would be the same run)."""
    return BETA_LEVELS if any(b is not None for b in genotype.betas) else ("-",)


def design(seeds: list[int]) -> list[dict]:
    """Every run: each found function in every cell of sqrt x clip x betas, and the baselines under both clips."""
    runs = []
    for (name, genotype), sqrt, clip, seed in itertools.product(FOUND.items(), SQRT_LEVELS, CLIP_LEVELS, seeds):
        for betas in beta_levels(genotype):
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


def clipped_twin(run: dict) -> str | None:
    """The id of the clip-5 run that a clip-none run may equal; None for a clipped run."""
    return run_id({**run, "clip": "5"}) if CLIP_LEVELS[run["clip"]] is None else None


def unclipped_copy(run: dict, twin: dict) -> dict | None:
    """`run`'s record taken from its clip-5 twin when the twin never reached the clip, else None (train it).

    torch multiplies every gradient by min(1, clip / (norm + 1e-6)): exactly 1.0 while every step's norm stays
    below the clip, so the unclipped run is the same computation. The 0.1% margin keeps float32 rounding of
    norm + 1e-6 on the safe side."""
    largest = twin.get("grad_norm_max")
    if twin["status"] != "ok" or largest is None or not math.isfinite(largest):
        return None
    if largest >= 0.999 * CLIP_LEVELS["5"]:
        return None
    return {**twin, **run, "id": run_id(run), "derived_from": twin["id"]}


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


def _failures(runs: list[dict]) -> str:
    """The runs that did not train, by status ("1 diverged, 1 failed_to_learn"); "-" when all trained."""
    counts = collections.Counter(r["status"] for r in runs if r["status"] != "ok")
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "-"


def cell_rows(records: list[dict]) -> list[dict]:
    """One row per (function, sqrt, clip, betas): mean top-1 over the seeds that trained, failures counted."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["function"], r["sqrt"], r["clip"], r["betas"]), []).append(r)
    rows = []
    for (function, sqrt, clip, betas), runs in sorted(groups.items()):
        ok = [r["top1"] for r in runs if r["status"] == "ok"]
        medians = [r["grad_norm_median"] for r in runs if r["grad_norm_median"] is not None]  # None: no finite norm
        rows.append({"function": function, "sqrt": sqrt, "clip": clip, "betas": betas, "seeds": len(runs),
                     "ok": len(ok), "failed": _failures(runs),
                     "top1_mean": statistics.mean(ok) if ok else None,
                     "top1_sd": statistics.stdev(ok) if len(ok) > 1 else None,
                     "grad_norm_max": max(r["grad_norm_max"] or 0 for r in runs),
                     "grad_norm_median": statistics.median(medians) if medians else None})
    return rows


def _mean_and_p(diffs: list[float]) -> tuple[float | None, float | None]:
    """Mean of paired differences and the two-sided one-sample t-test's p (None below 2 pairs or with no spread)."""
    if not diffs:
        return None, None
    if len(diffs) < 2 or statistics.pstdev(diffs) == 0:
        return statistics.mean(diffs), None
    return statistics.mean(diffs), float(stats.ttest_1samp(diffs, 0.0).pvalue)


def vs_relu(records: list[dict]) -> dict[tuple, dict]:
    """Per cell, the paired difference from ReLU trained with the same seed and clip (same data order and
    initialisation seed): its mean over the seeds where both trained, the t-test p, and how many pairs."""
    relu = {(r["seed"], r["clip"]): r["top1"] for r in records if r["function"] == "relu" and r["status"] == "ok"}
    groups: dict[tuple, list[float]] = {}
    for r in records:
        key = (r["function"], r["sqrt"], r["clip"], r["betas"])
        if r["status"] == "ok" and (r["seed"], r["clip"]) in relu:
            groups.setdefault(key, []).append(r["top1"] - relu[r["seed"], r["clip"]])
    out = {}
    for key, diffs in groups.items():
        mean, p = _mean_and_p(diffs)
        out[key] = {"diff": mean, "p": p, "pairs": len(diffs)}
    return out


FACTORS = {"sqrt": ("ramp", "grafs"), "clip": ("none", "5"), "betas": ("trained", "frozen")}


def factor_effects(records: list[dict]) -> list[dict]:
    """Each factor's effect on top-1, paired: every two runs that differ only in that factor (same function, seed
    and other levels), second level minus first, per function and over all functions. A pair with a run that did
    not train (diverged) is counted, not averaged."""
    by_key = {(r["function"], r["sqrt"], r["clip"], r["betas"], r["seed"]): r for r in records}
    fields = ("function", "sqrt", "clip", "betas", "seed")
    rows = []
    for factor, (first, second) in FACTORS.items():
        diffs: dict[str, list[float]] = {}
        failed: dict[str, int] = {}
        at = fields.index(factor)
        for key, a in sorted(by_key.items(), key=lambda kv: str(kv[0])):
            if key[at] != first:
                continue
            b = by_key.get(key[:at] + (second,) + key[at + 1:])
            if b is None:
                continue
            for function in (a["function"], "all"):
                if a["status"] == b["status"] == "ok":
                    diffs.setdefault(function, []).append(b["top1"] - a["top1"])
                else:
                    failed[function] = failed.get(function, 0) + 1
        for function in sorted(set(diffs) | set(failed), key=lambda f: (f == "all", f)):
            values = diffs.get(function, [])
            mean, p = _mean_and_p(values)
            rows.append({"factor": f"{factor}: {first} -> {second}", "function": function, "pairs": len(values),
                         "failed": failed.get(function, 0), "diff": mean, "p": p,
                         "sd": statistics.stdev(values) if len(values) > 1 else None})
    return rows


def _num(v, fmt):
    return "-" if v is None else format(v, fmt)


def _cell(text: str) -> str:
    """A function name as a markdown table cell: its '|' (relu|sqrt) escaped, or it would split the row."""
    return text.replace("|", "\\|")


def effects_markdown(rows: list[dict]) -> str:
    lines = ["| factor | function | pairs | pairs with a failed run | mean difference (points) | sd | p |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['factor']} | {_cell(r['function'])} | {r['pairs']} | {r['failed']} | "
                     f"{_num(r['diff'], '+.2f')} | {_num(r['sd'], '.2f')} | {_num(r['p'], '.3g')} |")
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict], paired: dict[tuple, dict] | None = None) -> str:
    paired = paired or {}
    lines = ["| function | sqrt | clip | betas | ok/seeds | failed | top-1 mean | sd | vs ReLU, paired (p) "
             "| median \\|g\\| | max \\|g\\| |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pair = paired.get((r["function"], r["sqrt"], r["clip"], r["betas"]))
        versus = "-" if pair is None else f"{_num(pair['diff'], '+.2f')} ({_num(pair['p'], '.2g')})"
        lines.append(f"| {_cell(r['function'])} | {r['sqrt']} | {r['clip']} | {r['betas']} | {r['ok']}/{r['seeds']} | "
                     f"{r['failed']} | {_num(r['top1_mean'], '.2f')} | {_num(r['top1_sd'], '.2f')} | {versus} | "
                     f"{_num(r['grad_norm_median'], '.3g')} | {_num(r['grad_norm_max'], '.3g')} |")
    return "\n".join(lines) + "\n"


def run_all(todo: list[dict], records: dict[str, dict], start, finish, workers: int) -> None:
    """Trains `todo` in order, `workers` at a time (start(run) returns a future, finish(record) stores a result).
    A clip-none run waits for its clip-5 twin and is copied from it when the twin never reached the clip."""
    pending = list(todo)
    running: dict = {}
    while pending or running:
        i = 0
        while len(running) < workers and i < len(pending):
            run, twin = pending[i], clipped_twin(pending[i])
            if twin is not None and twin not in records and any(run_id(r) == twin for r in
                                                                 pending + list(running.values())):
                i += 1  # its twin decides whether it needs training
                continue
            pending.pop(i)
            copy = unclipped_copy(run, records[twin]) if twin in records else None
            if copy is not None:
                finish(copy)
            else:
                running[start(run)] = run
        if running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                del running[future]
                finish(future.result())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--network", default="resnet20")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated; run in this order")
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
    records = {r["id"]: r for r in read_records(log)}
    only = set(filter(None, args.only.split(",")))
    seeds = [int(s) for s in args.seeds.split(",")]
    todo = [r for r in design(seeds) if run_id(r) not in records and (not only or r["function"] in only)]
    if not args.report_only and todo:
        todo.sort(key=lambda r: (seeds.index(r["seed"]), cell_priority(r)))

        def finish(record: dict) -> None:
            records[record["id"]] = record
            append_record(log, record)
            how = f" (= {record['derived_from']}: never clipped)" if "derived_from" in record else ""
            print(f"{record['id']}: {record['status']} top-1 {record['top1']:.2f} max |g| "
                  f"{record['grad_norm_max']:.3g}{how}", flush=True)

        with ProcessPoolExecutor(args.workers) as pool:
            run_all(todo, records, lambda r: pool.submit(train_one, r, args.network, args.source, out, args.threads),
                    finish, args.workers)
    everything = list(records.values())  # only runs made here: records of another machine's runs do not mix
    (out / "table.md").write_text(markdown(cell_rows(everything), vs_relu(everything)))
    (out / "effects.md").write_text(effects_markdown(factor_effects(everything)))
    print((out / "table.md").read_text())
    print((out / "effects.md").read_text())


if __name__ == "__main__":
    main()
