"""Training throughput and peak memory of every activation variant, side by side, with ratios to ReLU.

    python bench/throughput.py [--json FILE] [--quick] [--device auto|cpu|cuda] [--batch 128] [--threads 1,2]

Rows, per network (ResNet8 and ResNet20): ReLU and Swish (built-in nn modules); the DARTS, GDAS and DrNAS
supernets, simple and complex spaces, operator set "grafs" (the search's weight step: forward, backward, gradient
clipping, SGD step, alphas frozen, betas trained); retraining of discretized functions (GenotypeActivation) for
x*sigmoid(x) (identity/identity/sigmul) and max(x,0)+beta (relu/const/add). Also, on the search network: one full
search iteration (architecture step + weight step at the search batch size), the same after 50% and 90% of
progressive shrinking's drops (darts-simple, drnas-complex: the one compiled kernel of the full candidate
set with the mask as input, as a shrinking search runs it; bench/shrinking.py compares it with eager along a whole
schedule), the plain autograd supernet of before (fused cells off) as the reference, and the share of a step
spent loading and augmenting a batch. Unless --quick, whole-schedule rows (bench/schedule.py): the default study's
shrinking DrNAS search of each space, its wall time cold and warm and its mean iteration ratio over the schedule.

Method
- Time: median of --steps timed steps after --warmup untimed ones (the first untimed step compiles the fused
  kernels: compile_s is the warmup time beyond that many median steps). Each timed step is followed by a step
  of a ReLU network kept for the whole run, and ratio_to_relu is the ratio of the two medians: this machine's
  speed drifts by tens of percent within a minute, which neighbouring steps share (the relu row's own ratio
  shows what is left of that noise). GDAS draws a new cell every step and compiles each operator's kernel the
  first time it is drawn: its warmup draws the same cells as its timed steps (the steady state of a long
  search). Random data; images/s = batch / median step time.
- Memory: one more step after the timed ones. On CPU, peak_mem_mb is what a fresh process would peak at: its
  resident size at start (interpreter and libraries, ~0.4 GB) + the variant's weights, buffers, gradients and
  optimizer state + the step's growth of the resident size (Linux VmHWM, reset through /proc/self/clear_refs,
  after malloc_trim has returned freed memory to the system). On CUDA, torch.cuda.max_memory_allocated after
  resetting the peak stats.
- Every variant runs in this one process, so variants that share a fused kernel (DARTS and DrNAS, ResNet8 and
  ResNet20, training and search) compile it once.
- On CUDA: channels_last and bf16 autocast. On any device: an estimate of the full protocol's wall time
  (presets/full.yaml) extrapolated from the measured step times.
The ratios come from one run, so they hold for the load the machine had then (printed); absolute numbers on a
shared machine do not.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.measure import GENOTYPES, SEARCH_NETWORK, SUPERNETS, Bench, thread_counts  # noqa: E402
from bench.schedule import markdown as schedule_markdown, schedule_records  # noqa: E402
from pipeline.training.device import resolve_device  # noqa: E402

SHRUNK_VARIANTS = ("darts-simple", "drnas-complex")  # search iterations after 50% / 90% of the shrinking drops
from pipeline.space.models import DEPTHS  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, help="write the records to this file")
    p.add_argument("--markdown", type=Path, help="write the table as Markdown (as in docs/benchmarks.md) to this file")
    p.add_argument("--quick", action="store_true", help="ResNet8 only, fewer steps (a smoke run)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", default=None,
                   help="torch CPU threads, comma-separated (default 1 and all cores): the ratios depend on it; "
                        "each count runs in its own process (inductor fixes a kernel's thread count when it compiles)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 6, quick 4; even: "
                                                           "half of them run after the ReLU reference step)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (the first one compiles)")
    p.add_argument("--networks", default=None, help="comma-separated (default resnet8,resnet20; quick resnet8)")
    p.add_argument("--no-schedule", action="store_true",
                   help="leave out the whole-schedule rows (bench/schedule.py, about 20 minutes on 2 cores)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: this process's CPU time, which a loaded machine's time-slicing leaves intact; "
                        "meaningful with --threads 1 on CPU only")
    args = p.parse_args(argv)
    default = "1" if args.clock == "cpu" else f"1,{os.cpu_count() or 1}"
    args.threads = sorted(set(thread_counts(p, args.threads or default)))
    if args.batch < 1 or min(args.threads) < 1 or args.warmup < 1 or (args.steps is not None and args.steps < 1):
        p.error("--batch, --threads, --warmup and --steps must be positive")
    args.steps = args.steps or (4 if args.quick else 6)
    args.networks = (args.networks or ("resnet8" if args.quick else "resnet8,resnet20")).split(",")
    unknown = [n for n in args.networks if n not in DEPTHS]
    if unknown:
        p.error(f"unknown network(s) {unknown}; choose from {sorted(DEPTHS)}")
    if args.clock == "cpu" and args.threads != [1]:
        p.error("--clock cpu needs --threads 1 (with more threads CPU time includes OpenMP's busy waiting)")
    return args


# --- running the jobs -----------------------------------------------------------------------------------------
def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        raise SystemExit(f"throughput.py: error: {err}") from None
    if len(args.threads) > 1 or wants_schedule(args, device):  # the rows in children, the schedule here
        return run_thread_counts(args, device)
    [args.threads] = args.threads
    torch.set_num_threads(args.threads)
    bench = Bench(args, device)
    started, load_before = time.time(), os.getloadavg()

    def job(fn, network, variant):
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - one failing variant is reported as a record, the rest still run
            return [{"network": network, "variant": variant, "error": f"{type(err).__name__}: {err}"}]

    # One-time costs (thread pools, oneDNN primitives, allocator growth) would otherwise land on the first row.
    job(lambda: bench.step_record(args.networks[0], "relu"), args.networks[0], "relu")
    records = []
    variants = ["relu", "swish", *(f"genotype {name}" for name in GENOTYPES), *SUPERNETS]
    for network in args.networks:
        for variant in variants + (["darts-simple (plain)"] if network == SEARCH_NETWORK and not args.quick else []):
            for record in job(lambda: bench.step_record(network, variant), network, variant):
                records.append(record)
                print(f"  {network:9s} {record.get('variant', variant):24s} {record.get('kind', ''):17s} "
                      f"{record.get('images_per_s', float('nan')):8.0f} img/s  {record.get('error', '')}", flush=True)
    # Progressive shrinking: the search iteration after 50% and 90% of the drops (the 0% row is the plain one).
    for variant in SHRUNK_VARIANTS:
        for fraction in (0.5, 0.9):
            for record in job(lambda: bench.shrunk_search_record(SEARCH_NETWORK, variant, fraction), SEARCH_NETWORK,
                              variant):
                records.append(record)
                print(f"  {SEARCH_NETWORK:9s} {record.get('variant', variant):24s} {record.get('kind', ''):17s} "
                      f"{record.get('images_per_s', float('nan')):8.0f} img/s  {record.get('error', '')}", flush=True)
    records += job(lambda: [bench.loading_record()], "-", "BatchLoader(augment=True)")
    finish(records, args, device, time.time() - started, load_before)
    return records


def wants_schedule(args, device) -> bool:
    """The whole-schedule rows: on CPU, unless --quick or --no-schedule (the per-thread-count children get the
    latter, so that the schedule runs once, after all of them)."""
    return not (args.quick or args.no_schedule or device.type != "cpu")


def run_thread_counts(args, device) -> list[dict]:
    """Each thread count in a fresh process of this script, one after the other; then the headline table over all."""
    records, started = [], time.time()
    with tempfile.TemporaryDirectory() as folder:
        for threads in args.threads:
            out = Path(folder) / f"threads{threads}.json"
            command = [sys.executable, str(Path(__file__).resolve()), "--threads", str(threads), "--json", str(out),
                       "--device", args.device, "--batch", str(args.batch), "--steps", str(args.steps),
                       "--warmup", str(args.warmup), "--networks", ",".join(args.networks), "--clock", args.clock,
                       "--no-schedule"]
            print(f"--- {threads} thread(s) ---", flush=True)
            subprocess.run(command + (["--quick"] if args.quick else []), check=True)
            records += json.loads(out.read_text())
    schedule = schedule_records(["simple", "complex"], "drnas", max(args.threads)) if wants_schedule(args, device) \
        else []
    print(f"\n{len(args.threads)} thread counts in {time.time() - started:.0f} s")
    print_headline(records, device, args)
    if schedule:
        print("\n" + schedule_markdown(schedule))
    if args.json:
        args.json.write_text(json.dumps(records, indent=1) + "\n")
        if schedule:
            args.json.with_suffix(".schedule.json").write_text(json.dumps(schedule, indent=1) + "\n")
        print(f"wrote {args.json}")
    if args.markdown:
        args.markdown.write_text(headline_markdown(records) + "\n" + markdown_table(records)
                                 + ("\n" + schedule_markdown(schedule) if schedule else ""))
        print(f"wrote {args.markdown}")
    return records


def _headline_rows(records) -> tuple[list[str], list[list[str]]]:
    """Per supernet variant and thread count: train step / ReLU step per network, search iteration / ReLU step."""
    by = {(r["threads"], r["network"], r["variant"], r["kind"]): r for r in records if "error" not in r}
    threads = sorted({r["threads"] for r in records if "threads" in r})
    networks = [n for n in DEPTHS if any(key[1] == n for key in by)]
    header = ["variant", "threads"] + [f"{n} train step / ReLU" for n in networks] + \
             [f"{SEARCH_NETWORK} search iteration / ReLU step"]
    rows = []
    for variant in ["relu", "swish", *(f"genotype {g}" for g in GENOTYPES), *SUPERNETS]:
        for t in threads:
            cells = [by.get((t, n, variant, "train_step"), {}).get("ratio_to_relu", math.nan) for n in networks]
            cells.append(by.get((t, SEARCH_NETWORK, variant, "search_iteration"), {}).get("ratio_to_relu", math.nan))
            if any(math.isfinite(c) for c in cells):
                rows.append([variant, str(t)] + [f"{c:.2f}" if math.isfinite(c) else "-" for c in cells])
    return header, rows


def print_headline(records, device, args):
    header, rows = _headline_rows(records)
    print(f"\nheadline on {device} (ratios to a ReLU training step, same process; images per second):")
    print("  ".join(f"{h:>22s}" if i else f"{h:24s}" for i, h in enumerate(header)))
    for row in rows:
        print("  ".join(f"{c:>22s}" if i else f"{c:24s}" for i, c in enumerate(row)))


def headline_markdown(records) -> str:
    header, rows = _headline_rows(records)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def finish(records, args, device, seconds, load_before):
    relu = {r["network"]: r for r in records if r.get("variant") == "relu" and r.get("kind") == "train_step"}
    for r in records:
        base = relu.get(r.get("network"))
        if base and "images_per_s" in r and r["kind"] != "data_loading":
            r.setdefault("ratio_to_relu", r["images_per_s"] / base["images_per_s"])
            if "peak_mem_mb" in r:
                r["mem_ratio_to_relu"] = r["peak_mem_mb"] / base["peak_mem_mb"]
        r.setdefault("device", str(device))
        r.setdefault("threads", args.threads)
        r.setdefault("clock", args.clock)
    for r in records:
        if r.get("kind") == "data_loading":
            for network, base in relu.items():
                r[f"share_of_step_{network}"] = r["step_ms"] / (r["step_ms"] + base["step_ms"])
    print_table(records, device, args, seconds, load_before)
    print_headline(records, device, args)
    print_targets(records)
    print_protocol_estimate(records, device)
    if args.json:
        args.json.write_text(json.dumps(records, indent=1) + "\n")
        print(f"wrote {args.json}")
    if args.markdown:
        args.markdown.write_text(markdown_table(records))
        print(f"wrote {args.markdown}")


def print_table(records, device, args, seconds, load_before):
    print(f"\ndevice {device}, {args.threads} threads, batch {args.batch}, {args.clock} clock, load average "
          f"{load_before[0]:.2f} before / {os.getloadavg()[0]:.2f} after, {seconds:.0f} s")
    print(f"{'network':9s} {'variant':24s} {'kind':17s} {'img/s':>7s} {'x ReLU':>7s} {'ms':>8s} {'peak MB':>8s} "
          f"{'x ReLU':>7s} {'compile s':>9s}")
    for r in records:
        if "error" in r:
            print(f"  failed: {r['error']}")
            continue
        print(f"{r['network']:9s} {r['variant']:24s} {r['kind']:17s} {r['images_per_s']:7.0f} "
              f"{r.get('ratio_to_relu', math.nan):7.2f} {r['step_ms']:8.1f} {r.get('peak_mem_mb', math.nan):8.0f} "
              f"{r.get('mem_ratio_to_relu', math.nan):7.2f} {r.get('compile_s', math.nan):9.1f}")
        for key, share in r.items():
            if key.startswith("share_of_step_"):
                print(f"{'':9s} loading + augmentation = {100 * share:.1f}% of a {key[14:]} ReLU step")


def markdown_table(records) -> str:
    lines = ["| network | threads | variant | images/s | ratio to ReLU | peak memory (MB) | memory vs ReLU "
             "| compile (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        if "error" in r or r["kind"] == "data_loading":
            continue
        variant = r["variant"] + (" (search iteration)" if r["kind"] == "search_iteration" else "")
        cells = [f"{r['images_per_s']:.0f}", f"{r.get('ratio_to_relu', math.nan):.2f}"]
        cells += ["", ""] if r["kind"] == "search_iteration" else [f"{r['peak_mem_mb']:.0f}",
                                                                    f"{r.get('mem_ratio_to_relu', math.nan):.2f}"]
        cells.append(f"{max(r.get('compile_s', 0.0), 0.0):.1f}")
        lines.append(f"| {r['network']} | {r['threads']} | {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


TARGETS = (  # (what, variants, the record field, bound, at least?) from the project's issue 5
    ("DARTS/DrNAS supernet throughput", ("darts-", "drnas-"), "ratio_to_relu", 0.5, True),
    ("GDAS supernet throughput", ("gdas-",), "ratio_to_relu", 0.85, True),
    ("supernet peak memory", ("darts-", "gdas-", "drnas-"), "mem_ratio_to_relu", 2.0, False),
    ("retraining a discretized function", ("genotype ",), "ratio_to_relu", 0.9, True),
)


def print_targets(records):
    print("\ntargets (x ReLU, same run):")
    steps = [r for r in records if r.get("kind") == "train_step" and "error" not in r]
    for what, prefixes, field, bound, at_least in TARGETS:
        for r in steps:
            if r["variant"].startswith(prefixes) and not r["variant"].endswith("(plain)") and field in r:
                met = r[field] >= bound if at_least else r[field] <= bound
                print(f"  {'met   ' if met else 'MISSED'} {what:34s} {r['network']:9s} {r['variant']:24s} "
                      f"{r[field]:5.2f} ({'>=' if at_least else '<='} {bound})")
    for r in records:
        for key, share in r.items():
            if key.startswith("share_of_step_"):
                print(f"  {'met   ' if share < 0.05 else 'MISSED'} {'data loading + augmentation':34s} "
                      f"{key[14:]:9s} {'share of a ReLU step':24s} {share:5.3f} (< 0.05)")


def print_protocol_estimate(records, device):
    """Full protocol (presets/full.yaml) from the measured step times: search on the search network, 50 epochs
    of 25,000 + 25,000 images for each of 6 searches; retraining 200 epochs of 50,000 images (+ 10,000 test
    images per epoch) for 6 searched + 2 baseline functions x 2 networks x 3 seeds. A searched function is
    timed as the max(x,0)+beta genotype; evaluation passes as the measured eval forward."""
    by = {(r["network"], r["variant"], r["kind"]): r for r in records if "error" not in r}
    total, lines = 0.0, []
    for variant in SUPERNETS:
        it, step = by.get((SEARCH_NETWORK, variant, "search_iteration")), by.get((SEARCH_NETWORK, variant, "train_step"))
        if it and step:
            per_epoch = math.ceil(25_000 / it["batch"]) * it["step_ms"] + 25_000 / step["batch"] * step["eval_forward_ms"]
            total += 50 * per_epoch / 1e3
            lines.append(f"search {variant}: {50 * per_epoch / 3.6e6:.2f} h")
    for network in {r["network"] for r in records if r["network"] != "-"}:
        for variant, count in (("relu", 1), ("swish", 1), ("genotype max(x,0)+beta", 6)):
            r = by.get((network, variant, "train_step"))
            if r:
                per_epoch = math.ceil(50_000 / r["batch"]) * r["step_ms"] + 10_000 / r["batch"] * r["eval_forward_ms"]
                total += 3 * count * 200 * per_epoch / 1e3
                lines.append(f"retrain {network} {variant} x{3 * count}: {3 * count * 200 * per_epoch / 3.6e6:.2f} h")
    print(f"\nfull protocol estimate on this device ({device}; runs back to back): {total / 3600:.1f} h")
    for line in lines:
        print("  " + line)


if __name__ == "__main__":
    main()
