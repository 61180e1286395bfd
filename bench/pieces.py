"""The pieces of a search step: what each costs and how much faster it runs on N threads than on one.

    python bench/pieces.py [--threads 1,2] [--batch 128] [--json FILE] [--markdown FILE]

The issue it answers: a supernet step gains less from a second thread than a ReLU step does, so its ratio to ReLU
falls as threads are added. Each piece runs on the activation of ResNet-8's first stage (batch x 16 x 32 x 32,
float32), forward + backward with a gradient of ones:
- `conv3x3` (16 -> 16, with its weight gradient) and `relu`: what a ReLU network's step is made of;
- the fused cell of each space (operator set `grafs`, DARTS weights; the search's default), as the weight step
  runs it (gradients of x and the betas) and as the architecture step runs it (also the operator weights'),
  compiled (one inductor kernel, as a non-shrinking search runs it) and eager (a shrinking search).
- each relaxation's operator weights from the alphas of the complex space's cell, forward and backward (with
  DrNAS's KL regularizer; `per site` draws a sample for each of ResNet-8's 7 sites): the part of a step where
  DARTS, GDAS and DrNAS differ.
Each thread count runs in its own process: inductor fixes a compiled kernel's thread count when it compiles.
Median of --repeats calls after two untimed ones (the first compiles). "candidate evaluations / ns" counts, per
element, every candidate of every edge once (the unit of work of a mixed cell); "GB/s" is the tensor bytes the
call reads and writes at least (x, out, gradients, saved tensors) over its time: far below the memory bandwidth, the
cell is bound by arithmetic, and its scaling by how the work is split over threads.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.measure import thread_counts  # noqa: E402
from pipeline.kernels import fused  # noqa: E402
from pipeline.search.cell import MixedActivation  # noqa: E402
from pipeline.search.loop import SearchConfig, build_supernet  # noqa: E402
from pipeline.space.genotype import edges_of  # noqa: E402

CHANNELS, SIZE = 16, 32  # ResNet-8's first stage


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default=f"1,{os.cpu_count() or 1}", help="comma-separated thread counts")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--pieces", default=None, help="comma-separated subset of the piece names (default: all)")
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one thread count, records to stdout
    args = p.parse_args(argv)
    args.threads = thread_counts(p, args.threads)
    if min(args.threads) < 1 or args.batch < 1 or args.repeats < 1:
        p.error("--threads, --batch and --repeats must be positive")
    return args


def timed(call, repeats: int) -> float:
    times = []
    for i in range(repeats + 2):
        started = time.perf_counter()
        call()
        if i >= 2:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def conv_piece(x):
    conv = torch.nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1, bias=False)
    grad = torch.ones_like(x)
    return (lambda: torch.autograd.grad(conv(x), [x, conv.weight], grad)), 0, 2 * x.numel() * 4 * 2


def relu_piece(x):
    grad = torch.ones_like(x)
    return (lambda: torch.autograd.grad(F.relu(x), x, grad)), 0, 4 * x.numel() * 4


def cell_piece(space: str, arch_step: bool, mode: str, x):
    """A fused cell site of a DARTS supernet: forward + backward for x and the betas (and the operator weights,
    with `arch_step`)."""
    supernet = build_supernet(SearchConfig(optimizer="darts", space=space, network="resnet8", batch_size=len(x)))
    site = next(m for m in supernet.modules() if isinstance(m, MixedActivation))
    cell = site.cell
    for alpha in cell.alpha_dict().values():
        alpha.requires_grad_(arch_step)
    inputs = [x, *cell.betas.values()] + (list(cell.alpha_dict().values()) if arch_step else [])
    grad = torch.ones_like(x)
    candidates = sum(len(cell.active(edge)) for edge in edges_of(space))

    def call():
        with fused.using(mode):
            return torch.autograd.grad(site(x), inputs, grad, allow_unused=True)
    # Bytes at least: x read twice, out written, grad read, grad x written, one saved derivative each way.
    return call, candidates, 7 * x.numel() * 4


def relaxation_piece(optimizer: str, per_site: bool, x):
    """Operator weights from the complex cell's alphas, their backward, and the regularizer (DrNAS)."""
    supernet = build_supernet(SearchConfig(optimizer=optimizer, space="complex", network="resnet8"))
    relaxation, alphas = supernet.relaxation, supernet.cell.alpha_dict()
    draws = 7 if per_site else 1  # ResNet-8's activation sites
    probes = {edge: torch.randn(a.shape, generator=torch.Generator().manual_seed(1)) for edge, a in alphas.items()}

    def call():
        relaxation.resample(alphas)
        total = relaxation.regularizer(alphas)
        for _ in range(draws):
            weights = relaxation.weights(alphas)
            total = total + sum((weights[edge] * probes[edge]).sum() for edge in weights)
        return torch.autograd.grad(total, list(alphas.values()))
    return call, 0, 0


PIECES = {
    "conv3x3": conv_piece,
    "relu": relu_piece,
    **{f"{space} cell {step} step {mode}": (lambda x, s=space, a=step == "arch", m=mode: cell_piece(s, a, m, x))
       for space in ("simple", "complex") for step in ("weight", "arch") for mode in ("compile", "eager")},
    **{f"{optimizer} operator weights{' per site' if per_site else ''}":
       (lambda x, o=optimizer, p=per_site: relaxation_piece(o, p, x))
       for optimizer, per_site in (("darts", False), ("gdas", False), ("drnas", False), ("drnas", True))},
}


def child(args) -> list[dict]:
    torch.set_num_threads(args.threads[0])
    x = torch.randn(args.batch, CHANNELS, SIZE, SIZE, generator=torch.Generator().manual_seed(0)).requires_grad_()
    records = []
    for name in args.pieces or PIECES:
        call, candidates, nbytes = PIECES[name](x)
        seconds = timed(call, args.repeats)
        record = {"piece": name, "threads": args.threads[0], "ms": 1e3 * seconds}
        if nbytes:
            record["gb_per_s"] = nbytes / seconds / 1e9
        if candidates:
            record["candidate_evals_per_ns"] = x.numel() * candidates / seconds / 1e9
        records.append(record)
    return records


def run_all(args) -> list[dict]:
    """One process per thread count; then each piece's speed-up over its one-thread time."""
    records = []
    for threads in args.threads:
        command = [sys.executable, __file__, "--child", "--threads", str(threads), "--batch", str(args.batch),
                   "--repeats", str(args.repeats)] + (["--pieces", ",".join(args.pieces)] if args.pieces else [])
        done = subprocess.run(command, capture_output=True, text=True, check=True,
                              env=os.environ | {"OMP_NUM_THREADS": str(threads)})
        records += json.loads(done.stdout.strip().splitlines()[-1])
    single = {r["piece"]: r["ms"] for r in records if r["threads"] == 1}
    for record in records:
        if record["piece"] in single:
            record["speedup"] = single[record["piece"]] / record["ms"]
            record["efficiency"] = record["speedup"] / record["threads"]
    return records


def markdown(records: list[dict]) -> str:
    lines = ["| piece | threads | ms | speed-up vs 1 thread | candidate evaluations / ns | GB/s (at least) |",
             "|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (list(PIECES).index(r["piece"]), r["threads"])):
        evals = f"{r['candidate_evals_per_ns']:.2f}" if "candidate_evals_per_ns" in r else ""
        speedup = f"{r['speedup']:.2f}" if "speedup" in r else ""
        gb = f"{r['gb_per_s']:.1f}" if "gb_per_s" in r else ""
        lines.append(f"| {r['piece']} | {r['threads']} | {r['ms']:.2f} | {speedup} | {evals} | {gb} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.pieces:
        args.pieces = args.pieces.split(",")
        unknown = sorted(set(args.pieces) - set(PIECES))
        if unknown:
            raise SystemExit(f"unknown --pieces {unknown}; choose from {list(PIECES)}")
    if args.child:
        print(json.dumps(child(args)))
        return
    records = run_all(args)
    table = markdown(records)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(records, indent=2))
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return records


if __name__ == "__main__":
    main()
