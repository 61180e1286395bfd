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
import ctypes
import gc
import json
import math
import os
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
    p.add_argument("--markdown", type=Path, help="write the table as Markdown (the README's) to this file")
    p.add_argument("--quick", action="store_true", help="ResNet8 only, fewer steps (a smoke run)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (the ratios depend on it)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 5, quick 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (the first one compiles)")
    p.add_argument("--networks", default=None, help="comma-separated (default resnet8,resnet20; quick resnet8)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: this process's CPU time, which a loaded machine's time-slicing leaves intact; "
                        "meaningful with --threads 1 on CPU only")
    args = p.parse_args(argv)
    if args.batch < 1 or args.threads < 1 or args.warmup < 1 or (args.steps is not None and args.steps < 1):
        p.error("--batch, --threads, --warmup and --steps must be positive")
    args.steps = args.steps or (3 if args.quick else 5)
    args.networks = (args.networks or ("resnet8" if args.quick else "resnet8,resnet20")).split(",")
    unknown = [n for n in args.networks if n not in DEPTHS]
    if unknown:
        p.error(f"unknown network(s) {unknown}; choose from {sorted(DEPTHS)}")
    if args.clock == "cpu" and args.threads != 1:
        p.error("--clock cpu needs --threads 1 (with more threads CPU time includes OpenMP's busy waiting)")
    return args


def _proc_status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise OSError(f"no {field} in /proc/self/status")


def _persistent_mb(model: nn.Module, opt: torch.optim.Optimizer) -> float:
    """Weights, buffers, gradients and optimizer state: held between steps, so in the resident size a step starts
    from (on CPU the peak is measured as the step's growth over that)."""
    tensors = [*model.parameters(), *model.buffers(), *(p.grad for p in model.parameters() if p.grad is not None),
               *(t for state in opt.state.values() for t in state.values() if isinstance(t, torch.Tensor))]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def _release_and_reset_peak():
    """Return freed memory to the system and reset the peak resident size; the resident MB after that, or None
    where the system cannot (not Linux)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # resets VmHWM to the current resident size (Linux >= 4.0)
        return _proc_status_mb("VmRSS")
    except OSError:
        return None


# --- one measurement ----------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args, device: torch.device):
        self.args, self.device = args, device
        self.cuda = device.type == "cuda"
        self.memory_format = torch.channels_last if self.cuda else torch.contiguous_format
        self.clock = time.process_time if args.clock == "cpu" else time.perf_counter
        # CPU memory: a fresh process's resident size (None where it cannot be measured, see peak_mb).
        self.process_mb = None if self.cuda else _release_and_reset_peak()
        self.step_base_mb = None
        self.references: dict[str, object] = {}

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def batch(self, size: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(size, 3, 32, 32, generator=g).to(self.device, memory_format=self.memory_format)
        return x, torch.randint(0, 10, (size,), generator=g).to(self.device)

    def prepare(self, model: nn.Module) -> nn.Module:
        return model.to(self.device, memory_format=self.memory_format)

    def _time(self, step) -> float:
        self.sync()
        started = self.clock()
        step()
        self.sync()
        return self.clock() - started

    def timed(self, step, warmup: int, steps: int, replay=None, reference=None) -> tuple[float, float, float]:
        """(compile seconds, median step seconds, median reference step seconds or nan). The first warmup step
        compiles the fused kernels; with `replay` (a GDAS relaxation) the warmup draws the same operator samples
        as the timed steps, so that the operator kernels those samples need are compiled before timing (steady
        state of a long search). A `reference` step (ReLU) is timed right after each timed step: the machine's
        speed drifts by tens of percent over a minute here, and a ratio of neighbouring steps cancels it."""
        state = replay.generator.get_state() if replay is not None else None
        times, reference_times = [], []
        for i in range(warmup + steps):
            if replay is not None and i == warmup:
                replay.generator.set_state(state)
            times.append(self._time(step))
            if reference is not None and i >= warmup:
                reference_times.append(self._time(reference))
        median = statistics.median(times[warmup:])
        return (sum(times[:warmup]) - warmup * median, median,
                statistics.median(reference_times) if reference_times else math.nan)

    def reset_peak(self):
        """Before the memory step: freed memory back to the system, and the peak counter reset."""
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.step_base_mb = _release_and_reset_peak()

    def peak_mb(self, persistent_mb: float) -> float:
        """Peak memory of the step since `reset_peak` (CPU: as a fresh process would have it, see the module's
        docstring; nan where it cannot be measured)."""
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.step_base_mb is None or self.process_mb is None:
            return math.nan
        return self.process_mb + persistent_mb + _proc_status_mb("VmHWM") - self.step_base_mb

    def training_step(self, network: str, variant: str, x, y):
        """(model, one training step, GDAS relaxation or None, optimizer) for a variant."""
        if variant in SUPERNETS or variant == "darts-simple (plain)":
            optimizer, space = variant.split(" ")[0].split("-")
            cfg = SearchConfig(optimizer=optimizer, space=space, network=network, batch_size=len(x),
                               device=str(self.device), amp=self.cuda)
            model = self.prepare(build_supernet(cfg))
            opt = torch.optim.SGD(model.weight_parameters() + model.beta_parameters(), lr=cfg.lr,
                                  momentum=cfg.momentum, weight_decay=cfg.weight_decay)
            acc = MetricAccumulator()

            def step():
                model.relaxation.resample(model.cell.alpha_dict())
                _weight_step(model, opt, x, y, cfg, self.device, acc)
            model.train()
            return model, step, (model.relaxation if model.relaxation.hard else None), opt
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
        return model, step, None, opt

    def reference_step(self, network: str):
        """The ReLU training step every variant of `network` is compared with (built once, kept)."""
        if network not in self.references:
            x, y = self.batch(self.args.batch, seed=3)
            self.references[network] = self.training_step(network, "relu", x, y)[1]
        return self.references[network]

    def step_record(self, network: str, variant: str) -> dict:
        """Time the training step of one variant against ReLU's, then its peak memory in one more step; for
        supernets on the search network also a search iteration."""
        args, batch = self.args, self.args.batch
        reference = self.reference_step(network)
        x, y = self.batch(batch)
        model, step, replay, opt = self.training_step(network, variant, x, y)
        with fused.using("off" if variant.endswith("(plain)") else "auto"):
            # GDAS: twice the steps, as each draws another cell; the warmup draws the same cells first.
            steps = 2 * args.steps if replay is not None else args.steps
            state = replay.generator.get_state() if replay is not None else None
            compile_s, step_s, relu_s = self.timed(step, steps if replay is not None else args.warmup, steps,
                                                   replay, reference)
            if replay is not None:
                replay.generator.set_state(state)  # a cell compiled above: no compiler memory in the peak
            self.reset_peak()
            self._time(step)
            peak_mb = self.peak_mb(_persistent_mb(model, opt))
            record = {"network": network, "variant": variant, "kind": "train_step", "batch": batch,
                      "images_per_s": batch / step_s, "step_ms": 1e3 * step_s, "relu_step_ms": 1e3 * relu_s,
                      "ratio_to_relu": relu_s / step_s, "compile_s": compile_s, "peak_mem_mb": peak_mb}
            model.eval()
            with torch.no_grad(), autocast_context(self.device, self.cuda):
                _, forward_s, _ = self.timed(lambda: model(x), 1, 2)
            record["eval_forward_ms"] = 1e3 * forward_s
            records = [record]
            if variant in SUPERNETS and network == SEARCH_NETWORK:
                records.append(self.search_record(model, variant, network))
        return records

    def search_record(self, model, variant: str, network: str) -> dict:
        """One search iteration: the architecture step on a validation batch, then the weight step."""
        optimizer, space = variant.split("-")
        search_batch = min(SEARCH_BATCH, self.args.batch)  # a smaller --batch (smoke runs) shrinks it too
        cfg = SearchConfig(optimizer=optimizer, space=space, network=network, batch_size=search_batch,
                           device=str(self.device), amp=self.cuda)
        model.train()
        opt = torch.optim.SGD(model.weight_parameters() + model.beta_parameters(), lr=cfg.lr, momentum=cfg.momentum)
        architect = Architect(model, lr=cfg.arch_lr, betas=cfg.arch_betas, weight_decay=cfg.arch_weight_decay,
                              train_betas=False, autocast=lambda: autocast_context(self.device, cfg.amp))
        (x, y), (xv, yv), acc = self.batch(search_batch, 1), self.batch(search_batch, 2), MetricAccumulator()

        def iteration():
            model.relaxation.resample(model.cell.alpha_dict())
            architect.step(xv, yv, x, y, weight_lr=cfg.lr, weight_decay=cfg.weight_decay)
            _weight_step(model, opt, x, y, cfg, self.device, acc)

        steps = 2
        replay = model.relaxation if model.relaxation.hard else None
        compile_s, iteration_s, _ = self.timed(iteration, steps if replay else self.args.warmup, steps, replay)
        return {"network": network, "variant": variant, "kind": "search_iteration", "batch": search_batch,
                "images_per_s": search_batch / iteration_s, "step_ms": 1e3 * iteration_s, "compile_s": compile_s}

    def loading_record(self) -> dict:
        """Seconds per batch of BatchLoader with augmentation on uint8 images (CIFAR-sized)."""
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (10_000, 3, 32, 32), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 10, (10_000,), generator=g)
        loader = BatchLoader(images, labels, self.args.batch, shuffle=True, augment=True, drop_last=True,
                             device=self.device, channels_last=self.cuda)
        batches = iter(loader)
        _, batch_s, _ = self.timed(lambda: next(batches), 2, 20)
        return {"network": "-", "variant": "BatchLoader(augment=True)", "kind": "data_loading",
                "batch": self.args.batch, "images_per_s": self.args.batch / batch_s, "step_ms": 1e3 * batch_s}


# --- running the jobs -----------------------------------------------------------------------------------------
def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        raise SystemExit(f"throughput.py: error: {err}") from None
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
    records += job(lambda: [bench.loading_record()], "-", "BatchLoader(augment=True)")
    finish(records, args, device, time.time() - started, load_before)
    return records


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
    lines = ["| network | variant | images/s | ratio to ReLU | peak memory (MB) | memory vs ReLU | compile (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        if "error" in r or r["kind"] == "data_loading":
            continue
        variant = r["variant"] + (" (search iteration)" if r["kind"] == "search_iteration" else "")
        cells = [f"{r['images_per_s']:.0f}", f"{r.get('ratio_to_relu', math.nan):.2f}"]
        cells += ["", ""] if r["kind"] == "search_iteration" else [f"{r['peak_mem_mb']:.0f}",
                                                                    f"{r.get('mem_ratio_to_relu', math.nan):.2f}"]
        cells.append(f"{max(r.get('compile_s', 0.0), 0.0):.1f}")
        lines.append(f"| {r['network']} | {variant} | " + " | ".join(cells) + " |")
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
