"""Training throughput and peak memory of every activation variant, side by side, with ratios to ReLU.

    python bench/throughput.py [--json FILE] [--quick] [--device auto|cpu|cuda] [--batch 128] [--threads 2]

Rows, per network (ResNet8 and ResNet20): ReLU and Swish (built-in nn modules); the DARTS, GDAS and DrNAS
supernets, simple and complex spaces, operator set "grafs" (the search's weight step: forward, backward, gradient
clipping, SGD step, alphas frozen, betas trained); retraining of discretized functions (GenotypeActivation) for
x*sigmoid(x) (identity/identity/sigmul) and max(x,0)+beta (relu/const/add). Also, on the search network: one full
search iteration (architecture step + weight step at the search batch size), the plain autograd supernet of
before (fused cells off) as the reference, and the share of a step spent loading and augmenting a batch.

Method
- Time: median of --steps timed steps after --warmup untimed ones (the first untimed step compiles the fused
  kernels: compile_s is the warmup time beyond that many median steps). GDAS draws a new cell every step and
  compiles each operator's kernel the first time it is drawn: its warmup draws the same cells as its timed
  steps (the steady state of a long search). Random data; images/s = batch / median step time.
- Memory: on CPU each (network, variant) runs in a forked child; peak_mem_mb is its peak resident set size
  (getrusage ru_maxrss) after the timed steps, so it includes the ~0.4 GB of interpreter and libraries every
  variant shares. On CUDA, torch.cuda.max_memory_allocated after resetting the peak stats.
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
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from pipeline import fused  # noqa: E402
from pipeline.architect import Architect  # noqa: E402
from pipeline.augment import BatchLoader  # noqa: E402
from pipeline.device import autocast_context, resolve_device  # noqa: E402
from pipeline.genotype import Genotype  # noqa: E402
from pipeline.metrics import MetricAccumulator  # noqa: E402
from pipeline.models import DEPTHS, build_resnet  # noqa: E402
from pipeline.search import SearchConfig, _weight_step, build_supernet  # noqa: E402
from pipeline.train import parameter_groups  # noqa: E402

SUPERNETS = [f"{opt}-{space}" for opt in ("darts", "gdas", "drnas") for space in ("simple", "complex")]
GENOTYPES = {
    "x*sigmoid(x)": Genotype("simple", ("identity", "identity", "sigmul"), (None, None, None)),
    "max(x,0)+beta": Genotype("simple", ("relu", "const", "add"), (None, 0.1, None)),
}
SEARCH_NETWORK, SEARCH_BATCH = "resnet8", 64  # presets/full.yaml


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, help="write the records to this file")
    p.add_argument("--quick", action="store_true", help="ResNet8 only, fewer steps (a smoke run)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (the ratios depend on it)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 4, quick 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (the first one compiles)")
    p.add_argument("--networks", default=None, help="comma-separated (default resnet8,resnet20; quick resnet8)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: this process's CPU time, which a loaded machine's time-slicing leaves intact; "
                        "meaningful with --threads 1 on CPU only")
    args = p.parse_args(argv)
    if args.batch < 1 or args.threads < 1 or args.warmup < 1 or (args.steps is not None and args.steps < 1):
        p.error("--batch, --threads, --warmup and --steps must be positive")
    args.steps = args.steps or (3 if args.quick else 4)
    args.networks = (args.networks or ("resnet8" if args.quick else "resnet8,resnet20")).split(",")
    unknown = [n for n in args.networks if n not in DEPTHS]
    if unknown:
        p.error(f"unknown network(s) {unknown}; choose from {sorted(DEPTHS)}")
    if args.clock == "cpu" and args.threads != 1:
        p.error("--clock cpu needs --threads 1 (with more threads CPU time includes OpenMP's busy waiting)")
    return args


# --- one measurement ----------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args, device: torch.device):
        self.args, self.device = args, device
        self.cuda = device.type == "cuda"
        self.memory_format = torch.channels_last if self.cuda else torch.contiguous_format
        self.clock = time.process_time if args.clock == "cpu" else time.perf_counter

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def batch(self, size: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(size, 3, 32, 32, generator=g).to(self.device, memory_format=self.memory_format)
        return x, torch.randint(0, 10, (size,), generator=g).to(self.device)

    def prepare(self, model: nn.Module) -> nn.Module:
        return model.to(self.device, memory_format=self.memory_format)

    def timed(self, step, warmup: int, steps: int, replay=None) -> tuple[float, float]:
        """(compile seconds, median step seconds). The first warmup step compiles the fused kernels; with
        `replay` (a GDAS relaxation) the warmup draws the same operator samples as the timed steps, so that the
        operator kernels those samples need are compiled before timing (steady state of a long search)."""
        state = replay.generator.get_state() if replay is not None else None
        times = []
        for i in range(warmup + steps):
            if replay is not None and i == warmup:
                replay.generator.set_state(state)
            self.sync()
            started = self.clock()
            step()
            self.sync()
            times.append(self.clock() - started)
        median = statistics.median(times[warmup:])
        return sum(times[:warmup]) - warmup * median, median

    def peak_mb(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    def reset_peak(self):
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def step_record(self, network: str, variant: str) -> dict:
        """Time the training step of one variant; for supernets on the search network also a search iteration."""
        args, batch = self.args, self.args.batch
        self.reset_peak()
        x, y = self.batch(batch)
        replay = None
        if variant in SUPERNETS or variant == "darts-simple (plain)":
            optimizer, space = variant.split(" ")[0].split("-")
            cfg = SearchConfig(optimizer=optimizer, space=space, network=network, batch_size=batch,
                               device=str(self.device), amp=self.cuda)
            model = self.prepare(build_supernet(cfg))
            opt = torch.optim.SGD(model.weight_parameters() + model.beta_parameters(), lr=cfg.lr,
                                  momentum=cfg.momentum, weight_decay=cfg.weight_decay)
            acc = MetricAccumulator()
            replay = model.relaxation if model.relaxation.hard else None

            def step():
                model.relaxation.resample(model.cell.alpha_dict())
                _weight_step(model, opt, x, y, cfg, self.device, acc)
        else:
            if variant == "relu":
                model = build_resnet(network)
            elif variant == "swish":
                model = build_resnet(network, lambda channels: nn.SiLU())
            else:
                model = build_resnet(network, GENOTYPES[variant.split(" ", 1)[1]].factory("scalar", True))
            model = self.prepare(model)
            opt = torch.optim.SGD(parameter_groups(model, 5e-4), lr=0.1, momentum=0.9)

            def step():
                opt.zero_grad(set_to_none=True)
                with autocast_context(self.device, self.cuda):
                    loss = F.cross_entropy(model(x).float(), y)
                loss.backward()
                opt.step()

        model.train()
        with fused.using("off" if variant.endswith("(plain)") else "auto"):
            # GDAS: twice the steps, as each draws another cell; the warmup draws the same cells first.
            steps = 2 * args.steps if replay is not None else args.steps
            compile_s, step_s = self.timed(step, steps if replay is not None else args.warmup, steps, replay)
            record = {"network": network, "variant": variant, "kind": "train_step", "batch": batch,
                      "images_per_s": batch / step_s, "step_ms": 1e3 * step_s, "compile_s": compile_s,
                      "peak_mem_mb": self.peak_mb()}
            model.eval()
            with torch.no_grad(), autocast_context(self.device, self.cuda):
                _, forward_s = self.timed(lambda: model(x), 1, 2)
            record["eval_forward_ms"] = 1e3 * forward_s
            records = [record]
            if variant in SUPERNETS and network == SEARCH_NETWORK:
                records.append(self.search_record(model, variant, network))
        return records

    def search_record(self, model, variant: str, network: str) -> dict:
        """One search iteration: the architecture step on a validation batch, then the weight step."""
        optimizer, space = variant.split("-")
        cfg = SearchConfig(optimizer=optimizer, space=space, network=network, batch_size=SEARCH_BATCH,
                           device=str(self.device), amp=self.cuda)
        model.train()
        opt = torch.optim.SGD(model.weight_parameters() + model.beta_parameters(), lr=cfg.lr, momentum=cfg.momentum)
        architect = Architect(model, lr=cfg.arch_lr, betas=cfg.arch_betas, weight_decay=cfg.arch_weight_decay,
                              train_betas=False, autocast=lambda: autocast_context(self.device, cfg.amp))
        (x, y), (xv, yv), acc = self.batch(SEARCH_BATCH, 1), self.batch(SEARCH_BATCH, 2), MetricAccumulator()

        def iteration():
            model.relaxation.resample(model.cell.alpha_dict())
            architect.step(xv, yv, x, y, weight_lr=cfg.lr, weight_decay=cfg.weight_decay)
            _weight_step(model, opt, x, y, cfg, self.device, acc)

        steps = 2
        replay = model.relaxation if model.relaxation.hard else None
        compile_s, iteration_s = self.timed(iteration, steps if replay else self.args.warmup, steps, replay)
        return {"network": network, "variant": variant, "kind": "search_iteration", "batch": SEARCH_BATCH,
                "images_per_s": SEARCH_BATCH / iteration_s, "step_ms": 1e3 * iteration_s, "compile_s": compile_s}

    def loading_record(self) -> dict:
        """Seconds per batch of BatchLoader with augmentation on uint8 images (CIFAR-sized)."""
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (10_000, 3, 32, 32), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 10, (10_000,), generator=g)
        loader = BatchLoader(images, labels, self.args.batch, shuffle=True, augment=True, drop_last=True,
                             device=self.device, channels_last=self.cuda)
        batches = iter(loader)
        _, batch_s = self.timed(lambda: next(batches), 2, 20)
        return {"network": "-", "variant": "BatchLoader(augment=True)", "kind": "data_loading",
                "batch": self.args.batch, "images_per_s": self.args.batch / batch_s, "step_ms": 1e3 * batch_s}


# --- running the jobs -----------------------------------------------------------------------------------------
def run_in_child(job):
    """Run job() in a forked child (fresh peak RSS, nothing left behind); returns its records."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read)
        try:
            payload = json.dumps(job())
        except BaseException as err:  # noqa: BLE001 - report any failure as a record
            payload = json.dumps([{"error": f"{type(err).__name__}: {err}"}])
        with os.fdopen(write, "w") as out:
            out.write(payload)
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as source:
        payload = source.read()
    os.waitpid(pid, 0)
    return json.loads(payload)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        raise SystemExit(f"throughput.py: error: {err}") from None
    # On CPU every job runs in a forked child: the parent must not have started OpenMP threads, so it computes
    # nothing itself. CUDA contexts do not survive fork; there peak memory is reset per job instead.
    bench = Bench(args, device)
    started, load_before = time.time(), os.getloadavg()

    def job(fn):
        def run():
            torch.set_num_threads(args.threads)
            return fn()
        return run() if device.type == "cuda" else run_in_child(run)

    records = []
    variants = ["relu", "swish", *(f"genotype {name}" for name in GENOTYPES), *SUPERNETS]
    for network in args.networks:
        for variant in variants + (["darts-simple (plain)"] if network == SEARCH_NETWORK and not args.quick else []):
            for record in job(lambda: bench.step_record(network, variant)):
                records.append(record)
                print(f"  {network:9s} {record.get('variant', variant):24s} {record.get('kind', ''):17s} "
                      f"{record.get('images_per_s', float('nan')):8.0f} img/s  {record.get('error', '')}", flush=True)
    records += job(lambda: [bench.loading_record()])
    finish(records, args, device, time.time() - started, load_before)
    return records


def finish(records, args, device, seconds, load_before):
    relu = {r["network"]: r for r in records if r.get("variant") == "relu" and r.get("kind") == "train_step"}
    for r in records:
        base = relu.get(r.get("network"))
        if base and "images_per_s" in r and r["kind"] != "data_loading":
            r["ratio_to_relu"] = r["images_per_s"] / base["images_per_s"]
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
    print_targets(records)
    print_protocol_estimate(records, device)
    if args.json:
        args.json.write_text(json.dumps(records, indent=1) + "\n")
        print(f"wrote {args.json}")


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
            per_epoch = math.ceil(25_000 / SEARCH_BATCH) * it["step_ms"] + 25_000 / step["batch"] * step["eval_forward_ms"]
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
