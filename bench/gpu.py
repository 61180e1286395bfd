"""The throughput benchmark on a CUDA GPU, time-boxed: one prepared run for a machine lent for a few minutes.

    python bench/gpu.py [--budget 330] [--out DIR]      # on the GPU machine; DIR defaults to $OUT or ./gpu-bench
    python bench/gpu.py --dry-run                       # CPU, tiny batches: proves the script runs end to end

What it measures (each job in its own fresh process, so one compilation or crash cannot touch another):
- retraining step (ResNet8, ResNet20 with ReLU; SGD Nesterov, batch 128, random data): eager fp32, eager bf16
  autocast + channels_last, torch.compile (default mode) bf16 + channels_last;
- the same step in 4 processes at once on the one GPU (summed images/s): whether retrainings should share a GPU;
- a search iteration (architecture step + weight step, batch 64, supernet on ResNet8) of darts-simple,
  drnas-complex and gdas-complex (bf16, channels_last, the fused cells as the search runs them).
Jobs run in order of importance; a job starts only if the budget has room for its estimate, else it is skipped
and printed as skipped, and a running job is killed when the budget runs out. The device is whatever
`pipeline.training.device.resolve_device("auto")` picks (no index is hard-coded; CUDA_VISIBLE_DEVICES decides).
Writes gpu-bench.json and gpu-bench.md under the output folder. `--dry-run` runs every job on the CPU with tiny
batches, 2 processes instead of 4 and torch.compile with the "eager" backend (inductor on CUDA cannot be tried
without a GPU; its path is just torch.compile(model)).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.measure import Bench  # noqa: E402
from pipeline.space.models import build_resnet  # noqa: E402
from pipeline.training.device import autocast_context, resolve_device  # noqa: E402
from pipeline.training.train import parameter_groups  # noqa: E402

# (name, job, estimated seconds on an H200 including process start and compilation), most important first.
TRAIN = {"kind": "train", "variant": "relu", "batch": 128}
FAST = {"amp": True, "channels_last": True}
JOBS = [
    ("resnet8 eager fp32", TRAIN | {"network": "resnet8"}, 25),
    ("resnet8 eager bf16 channels_last", TRAIN | FAST | {"network": "resnet8"}, 25),
    ("resnet20 eager bf16 channels_last", TRAIN | FAST | {"network": "resnet20"}, 25),
    ("search darts-simple", {"kind": "search", "variant": "darts-simple", "network": "resnet8", "batch": 64}, 60),
    ("resnet8 compiled bf16 channels_last", TRAIN | FAST | {"network": "resnet8", "compile": True}, 70),
    ("resnet8 eager bf16 channels_last x4 processes", TRAIN | FAST | {"network": "resnet8", "processes": 4}, 35),
    ("resnet20 eager bf16 channels_last x4 processes", TRAIN | FAST | {"network": "resnet20", "processes": 4}, 35),
    ("search drnas-complex", {"kind": "search", "variant": "drnas-complex", "network": "resnet8", "batch": 64}, 70),
    ("search gdas-complex", {"kind": "search", "variant": "gdas-complex", "network": "resnet8", "batch": 64}, 90),
    ("resnet20 compiled bf16 channels_last", TRAIN | FAST | {"network": "resnet20", "compile": True}, 90),
    ("resnet20 eager fp32", TRAIN | {"network": "resnet20"}, 25),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=330.0, help="seconds for the whole run, process starts included")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-bench"))
    p.add_argument("--seconds", type=float, default=5.0, help="timed window per job after its warmup")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny batches, short windows: a test of the script")
    p.add_argument("--only", default=None, help="comma-separated job names to run (default: all, in order)")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # one job as JSON (internal)
    args = p.parse_args(argv)
    if args.budget <= 0 or args.seconds <= 0:
        p.error("--budget and --seconds must be positive")
    names = [name for name, _, _ in JOBS]
    args.only = args.only.split(",") if args.only else names
    if set(args.only) - set(names):
        p.error(f"unknown job(s) {sorted(set(args.only) - set(names))}; the jobs are: {', '.join(names)}")
    return args


# --- one job, in a worker process ----------------------------------------------------------------------------
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_step(job, device):
    memory_format = torch.channels_last if job.get("channels_last") else torch.contiguous_format
    model = build_resnet(job["network"]).to(device, memory_format=memory_format)
    optimizer = torch.optim.SGD(parameter_groups(model, 5e-4), lr=0.1, momentum=0.9, nesterov=True)
    x = torch.randn(job["batch"], 3, 32, 32, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (job["batch"],), device=device)
    forward = torch.compile(model, backend=job.get("backend", "inductor")) if job.get("compile") else model
    model.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(device, job.get("amp", False)):
            loss = F.cross_entropy(forward(x).float(), y)
        loss.backward()
        optimizer.step()
    return step


def _search_iteration(job, device):
    """The search iteration of bench/measure.py (its Bench builds the supernet with bf16 and channels_last on
    CUDA), run for a timed window instead of a fixed two steps."""
    bench = Bench(argparse.Namespace(clock="wall", batch=job["batch"], warmup=1), device)
    x, y = bench.batch(job["batch"])
    model, _, _, _ = bench.training_step(job["network"], job["variant"], x, y)
    holder = {}
    original = bench.timed

    def capture(step, *args, **kwargs):  # search_record hands its iteration to timed(): keep it, time it here
        holder["iteration"] = step
        return original(step, *args, **kwargs)
    bench.timed = capture
    bench.search_record(model, job["variant"], job["network"])
    return holder["iteration"]


def run_job(job) -> dict:
    device = resolve_device(job["device"])
    started = time.perf_counter()
    step = (_train_step if job["kind"] == "train" else _search_iteration)(job, device)
    for _ in range(job["warmup"]):
        step()
    _sync(device)
    warmup_s = time.perf_counter() - started
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < job["seconds"]:
        for _ in range(job["chunk"]):
            step()
        steps += job["chunk"]
        _sync(device)
    elapsed = time.perf_counter() - started
    return {"images_per_s": steps * job["batch"] / elapsed, "step_ms": 1e3 * elapsed / steps, "steps": steps,
            "setup_and_warmup_s": warmup_s, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}


# --- the driver ------------------------------------------------------------------------------------------------
def launch(job, processes: int, timeout: float) -> dict:
    """Run `processes` workers of one job at once; their images/s summed."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)]
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(processes)]
    deadline, results, errors = time.perf_counter() + timeout, [], []
    for worker in workers:
        try:
            out, err = worker.communicate(timeout=max(1.0, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.communicate()
            errors.append(f"killed after {timeout:.0f} s (budget)")
            continue
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if worker.returncode or not lines:
            errors.append((err.strip().splitlines() or ["no output"])[-1])
        else:
            results.append(json.loads(lines[-1]))
    if errors:
        return {"status": "failed", "error": "; ".join(errors)}
    total = sum(r["images_per_s"] for r in results)
    return results[0] | {"status": "ok", "images_per_s": total, "images_per_s_per_process": total / processes,
                         "step_ms": sum(r["step_ms"] for r in results) / processes,
                         "setup_and_warmup_s": max(r["setup_and_warmup_s"] for r in results)}


def plan(args) -> list[tuple[str, dict, float]]:
    jobs = []
    for name, job, estimate in JOBS:
        if name not in args.only:
            continue
        job = job | {"device": "auto", "warmup": 3, "seconds": args.seconds, "chunk": 10}
        if args.dry_run:
            job |= {"device": "cpu", "batch": 4, "warmup": 1, "chunk": 1, "backend": "eager",
                    "processes": min(job.get("processes", 1), 2)}
            estimate = 0.0
        jobs.append((name, job, estimate))
    return jobs


def markdown(records, header: str) -> str:
    lines = [header, "", "| job | processes | images/s (all processes) | images/s per process | step ms | "
             "setup + warmup s | status |", "|---|---|---|---|---|---|---|"]
    for r in records:
        if r["status"] == "ok":
            lines.append(f"| {r['job']} | {r['processes']} | {r['images_per_s']:.0f} | "
                         f"{r['images_per_s_per_process']:.0f} | {r['step_ms']:.2f} | {r['setup_and_warmup_s']:.1f} | ok |")
        else:
            lines.append(f"| {r['job']} | {r['processes']} | - | - | - | - | {r['status']}: {r.get('error', '')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_job(json.loads(args.worker))), flush=True)
        return []
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    records = []
    for name, job, estimate in plan(args):
        left = args.budget - (time.perf_counter() - started)
        processes = job.pop("processes", 1)
        record = {"job": name, "processes": processes, **job}
        if left < estimate + args.seconds:
            record |= {"status": "skipped", "error": f"{left:.0f} s of the budget left, needs about "
                                                     f"{estimate + args.seconds:.0f} s"}
        else:
            record |= launch(job, processes, timeout=left)
        records.append(record)
        print(f"{name:48s} {record['status']:8s} "
              + (f"{record['images_per_s']:9.0f} img/s" if record["status"] == "ok" else record.get("error", "")),
              flush=True)
        (args.out / "gpu-bench.json").write_text(json.dumps(records, indent=1) + "\n")  # kept if killed later
    skipped = [r["job"] for r in records if r["status"] == "skipped"]
    if skipped:
        print(f"skipped (over budget): {', '.join(skipped)}")
    device = next((r["device_name"] for r in records if r["status"] == "ok"), "no job ran")
    header = (f"Throughput on {device}, torch {torch.__version__}, {time.perf_counter() - started:.0f} s of a "
              f"{args.budget:.0f} s budget{' (dry run: CPU, tiny batches)' if args.dry_run else ''}; random data.")
    (args.out / "gpu-bench.md").write_text(markdown(records, header))
    print(f"wrote {args.out / 'gpu-bench.json'} and {args.out / 'gpu-bench.md'}")
    return records


if __name__ == "__main__":
    main()
