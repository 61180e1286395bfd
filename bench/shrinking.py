"""What progressive shrinking costs per epoch: eager against the one compiled kernel of the whole schedule.

    TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) python bench/shrinking.py [--spaces simple,complex] [--markdown FILE]

A DrNAS supernet (ResNet-8, batch 64, operator set `grafs`, random data) is shrunk to --fractions of its drops.
At each point it times the architecture step and the weight step of a search iteration (median of --repeats
after a first call), each next to a ReLU ResNet-8 training step at batch 128 (the ratios' reference, as in
bench/throughput.py: search images/s over ReLU images/s), two ways:
- eager: the fused cell with the remaining candidates only (cheaper as candidates drop);
- compiled: the one kernel of the full candidate set with the mask as its runtime input (what a search runs).
The first compiled call's extra time (plus the first evaluation pass's) is the compile cost: at the first point
the kernels' compilation (cold in a fresh TORCHINDUCTOR_CACHE_DIR, which the run reports), at every later point
what the drop cost, which is 0 unless something recompiles.

The measured points then price whole searches: each epoch's candidate set (`pipeline.search.shrink`) gets its step
times by linear interpolation in the dropped fraction, warm-start epochs run the weight step as ReLU. Policies:
eager throughout; the one kernel with its compile paid once (a cold cache); the one kernel from a warm inductor
cache (compile not counted: every later search of the space). Schedules: the default study (6 epochs of 39
iterations, shrinking from epoch 1, one warm-start epoch) and GRAFS's length (50 epochs of 390 iterations, i.e.
25,000 images at batch 64, from epoch 2). Evaluation passes and data loading are left out: the ratio is the
search iteration's, as in the throughput bench.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch._inductor.runtime.cache_dir_utils import cache_dir  # noqa: E402

from bench.measure import SEARCH_BATCH, Bench  # noqa: E402
from pipeline.kernels import fused  # noqa: E402
from pipeline.search.architect import Architect  # noqa: E402
from pipeline.search.loop import SearchConfig, _weight_step, build_supernet  # noqa: E402
from pipeline.search.shrink import drops_per_epoch  # noqa: E402
from pipeline.training.metrics import MetricAccumulator  # noqa: E402

# (name, epochs, iterations per epoch, start_shrinking, warmstart_epochs)
SCHEDULES = (("default study", 6, 39, 1, 1), ("GRAFS length", 50, 390, 2, 1))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spaces", default="simple,complex")
    p.add_argument("--fractions", default="0,0.25,0.5,0.75,0.9,1", help="dropped fractions to measure (0 and 1 "
                                                                         "needed: the schedules interpolate)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--network", default="resnet8")
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    args = p.parse_args(argv)
    try:
        args.fractions = sorted(float(f) for f in args.fractions.split(","))
    except ValueError:
        p.error(f"--fractions must be comma-separated numbers such as 0,0.5,1, got {args.fractions!r}")
    if args.fractions[0] != 0 or args.fractions[-1] != 1:
        p.error("--fractions must include 0 and 1 (the schedules interpolate between measured points)")
    args.spaces = args.spaces.split(",")
    if args.repeats < 1:
        p.error("--repeats must be positive")
    args.clock, args.batch = "wall", 128  # what Bench reads
    return args


def measure_space(bench: Bench, args, space: str) -> list[dict]:
    """Step times (s) of the arch and weight steps at each dropped fraction, eager and compiled, and compile s."""
    cfg = SearchConfig(optimizer="drnas", space=space, network=args.network, batch_size=SEARCH_BATCH,
                       device=str(bench.device))
    supernet = bench.prepare(build_supernet(cfg)).train()
    # As the default study: the betas trained with the alphas (betas_with: arch).
    opt = torch.optim.SGD(supernet.weight_parameters(), lr=cfg.lr, momentum=cfg.momentum)
    architect = Architect(supernet, lr=cfg.arch_lr, betas=cfg.arch_betas, weight_decay=cfg.arch_weight_decay,
                          train_betas=True)
    (x, y), (xv, yv), acc = bench.batch(SEARCH_BATCH, 1), bench.batch(SEARCH_BATCH, 2), MetricAccumulator()
    relu = bench.reference_step(args.network)
    cell = supernet.cell

    def arch_step():
        supernet.relaxation.resample(cell.alpha_dict())
        architect.step(xv, yv, x, y, weight_lr=cfg.lr, weight_decay=cfg.weight_decay)

    def weight_step():
        _weight_step(supernet, opt, x, y, cfg, bench.device, acc)

    def evaluation():
        supernet.eval()
        with torch.no_grad():
            supernet(xv)
        supernet.train()

    cell.warm_relu = True  # a warm-start weight step: the network with ReLU, batch 64
    _, relu_weight_s, relu_reference_s = bench.timed(weight_step, 2, max(7, args.repeats), reference=relu)
    cell.warm_relu = False
    droppable = sum(len(names) - 1 for names in cell.candidates.values())
    records, dropped = [], 0
    for fraction in args.fractions:
        dropped += len(cell.drop(round(fraction * droppable) - dropped))
        record = {"space": space, "fraction": fraction, "candidates": sum(map(len, map(cell.active, cell.candidates))),
                  "relu_weight_step_s": relu_weight_s, "relu_weight_reference_s": relu_reference_s}
        relu_times = []
        for mode in ("eager", "compiled"):
            compile_s = 0.0
            with fused.using("eager" if mode == "eager" else "auto"):  # auto: batch 64 compiles, as a search
                for name, step in (("arch", arch_step), ("weight", weight_step), ("eval", evaluation)):
                    first, step_s, relu_s = bench.timed(step, 1, args.repeats, reference=relu)
                    record[f"{name}_{mode}_s"] = step_s
                    compile_s += first
                    relu_times.append(relu_s)
            if mode == "compiled":
                record["compile_s"] = compile_s
        record["relu_step_s"] = statistics.median(relu_times)
        print(json.dumps(record), flush=True)
        records.append(record)
    return records


POLICIES = ("eager", "one kernel, cold cache", "one kernel, warm cache")


def price(records: list[dict], epochs: int, steps: int, start: int, warm: int, policy: str) -> dict:
    """Seconds and per-epoch ratios of one schedule under one of POLICIES."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    droppable_total = records[0]["candidates"] - records[-1]["candidates"]
    edges = records[-1]["candidates"]
    drops = drops_per_epoch(epochs, start, droppable_total + edges, edges)
    mode = "eager" if policy == "eager" else "compiled"
    fractions = [r["fraction"] for r in records]

    def at(key, fraction):
        return float(np.interp(fraction, fractions, [r[key] for r in records]))
    relu_per_image = statistics.median(r["relu_step_s"] for r in records) / 128
    ratios, total, done = [], 0.0, 0
    for epoch in range(epochs):
        fraction = (done := done + drops[epoch]) / droppable_total
        weight = at("relu_weight_step_s", fraction) if epoch < warm else at(f"weight_{mode}_s", fraction)
        seconds = steps * (at(f"arch_{mode}_s", fraction) + weight)
        if epoch == 0 and policy == "one kernel, cold cache":  # compiled once, for the full set
            seconds += records[0]["compile_s"]
        ratios.append(steps * SEARCH_BATCH * relu_per_image / seconds)
        total += seconds
    return {"seconds": total, "mean_epoch_ratio": statistics.mean(ratios),
            "overall_ratio": epochs * steps * SEARCH_BATCH * relu_per_image / total, "epoch_ratios": ratios}


def summary(records: list[dict]) -> list[dict]:
    rows = []
    for space in dict.fromkeys(r["space"] for r in records):
        points = [r for r in records if r["space"] == space]
        for name, epochs, steps, start, warm in SCHEDULES:
            for policy in POLICIES:
                rows.append({"space": space, "schedule": name, "policy": policy}
                            | price(points, epochs, steps, start, warm, policy))
    return rows


def markdown(records: list[dict], rows: list[dict], cache: str) -> str:
    lines = [f"Inductor cache: {cache}.", "",
             "| space | dropped | candidates | arch step eager / compiled (ms) | weight step eager / compiled (ms) "
             "| iteration / ReLU step, eager | compiled | compile or recompile (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        ratio = {mode: (SEARCH_BATCH / (r[f"arch_{mode}_s"] + r[f"weight_{mode}_s"])) / (128 / r["relu_step_s"])
                 for mode in ("eager", "compiled")}
        lines.append(f"| {r['space']} | {100 * r['fraction']:.0f}% | {r['candidates']} | "
                     f"{1e3 * r['arch_eager_s']:.0f} / {1e3 * r['arch_compiled_s']:.0f} | "
                     f"{1e3 * r['weight_eager_s']:.0f} / {1e3 * r['weight_compiled_s']:.0f} | "
                     f"{ratio['eager']:.2f} | {ratio['compiled']:.2f} | {r['compile_s']:.1f} |")
    for space in dict.fromkeys(r["space"] for r in records):
        r = next(r for r in records if r["space"] == space)
        cap = (SEARCH_BATCH / (2 * r["relu_weight_step_s"])) / (128 / r["relu_weight_reference_s"])
        lines += ["", f"{space}: a weight step with ReLU at batch 64 (a warm-start epoch's) takes "
                  f"{1e3 * r['relu_weight_step_s']:.0f} ms against {1e3 * r['relu_weight_reference_s']:.0f} ms for "
                  f"a ReLU step at batch 128; an iteration runs two such passes (architecture step on a validation "
                  f"batch, weight step) for its 64 training images, so a cell as cheap as ReLU would give "
                  f"{cap:.2f}."]
    lines += ["", "| space | schedule | policy | iterations' time (s) | mean epoch ratio to ReLU | overall ratio |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['space']} | {r['schedule']} | {r['policy']} | {r['seconds']:.0f} | "
                     f"{r['mean_epoch_ratio']:.2f} | {r['overall_ratio']:.2f} |")
    return "\n".join(lines)


def cache_state() -> str:
    path = Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or cache_dir())
    fresh = not path.exists() or not any(path.iterdir())
    return f"{'cold (empty' if fresh else 'warm (in use'}: {path})"


def main(argv=None):
    args = parse_args(argv)
    cache = cache_state()
    bench = Bench(args, torch.device("cpu"))
    records = []
    for space in args.spaces:
        records += measure_space(bench, args, space)
    rows = summary(records)
    table = markdown(records, rows, cache)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"cache": cache, "points": records, "schedules": rows}, indent=2))
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return records, rows


if __name__ == "__main__":
    main()
