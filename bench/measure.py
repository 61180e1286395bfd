"""The measurements behind bench/throughput.py: one variant's training step timed against a ReLU step, its peak
memory, a search iteration, and batch loading. The method is described in throughput.py's docstring."""
from __future__ import annotations

import ctypes
import gc
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.kernels import fused
from pipeline.kernels.fused_genotype import fast_forward
from pipeline.search.architect import Architect
from pipeline.data.augment import BatchLoader
from pipeline.training.device import autocast_context
from pipeline.space.genotype import Genotype
from pipeline.training.metrics import MetricAccumulator
from pipeline.space.models import build_resnet
from pipeline.search.loop import SearchConfig, _weight_step, build_supernet
from pipeline.training.train import parameter_groups

SUPERNETS = [f"{opt}-{space}" for opt in ("darts", "gdas", "drnas") for space in ("simple", "complex")]
GENOTYPES = {
    "x*sigmoid(x)": Genotype("simple", ("identity", "identity", "sigmul"), (None, None, None)),
    "max(x,0)+beta": Genotype("simple", ("relu", "const", "add"), (None, 0.1, None)),
}
SEARCH_NETWORK, SEARCH_BATCH = "resnet8", 64  # presets/full.yaml


def thread_counts(parser, text: str) -> list[int]:
    """A --threads value such as "1,2" as integers, or the parser's one clear error."""
    try:
        return [int(t) for t in text.split(",")]
    except ValueError:
        parser.error(f"--threads must be comma-separated integers such as 1,2, got {text!r}")


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
        state of a long search). A `reference` step (ReLU) is timed next to each timed step: the machine's
        speed drifts by tens of percent over a minute here, and a ratio of neighbouring steps cancels it. The
        reference also gets a warmup step (its caches and allocator are as warm as the variant's), and which of
        the two goes first alternates: a step that follows the other network's step finds its weights and
        activations out of cache, a cost that a fixed order puts on one side only (the relu row read 1.1-1.2)."""
        state = replay.generator.get_state() if replay is not None else None
        times, reference_times = [], []
        for i in range(warmup + steps):
            if replay is not None and i == warmup:
                replay.generator.set_state(state)
            if reference is not None and i == warmup:
                self._time(reference)
            reference_first = reference is not None and i >= warmup and (i - warmup) % 2 == 1
            if reference_first:
                reference_times.append(self._time(reference))
            times.append(self._time(step))
            if reference is not None and i >= warmup and not reference_first:
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
            model = build_resnet(network, GENOTYPES[variant.split(" ", 1)[1]].factory("scalar", True, fast_forward))
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

    def shrunk_search_record(self, network: str, variant: str, fraction: float) -> list[dict]:
        """A search iteration of a supernet after `fraction` of its progressive-shrinking drops (0.5, 0.9), run as
        a shrinking search runs it: the one compiled kernel of the full candidate set, the mask its runtime input
        (as fast as the unshrunk compiled supernet; bench/shrinking.py has the eager alternative)."""
        x, y = self.batch(self.args.batch)
        model = self.training_step(network, variant, x, y)[0]
        cell = model.cell
        droppable = sum(len(names) - 1 for names in cell.candidates.values())
        cell.drop(round(fraction * droppable))
        with fused.using("auto"):
            record = self.search_record(model, variant, network)
        return [record | {"variant": f"{variant} ({100 * fraction:.0f}% dropped)", "dropped_fraction": fraction}]

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
