"""Measuring a supernet during and after the search: as trained (sampled relaxations draw per batch), as its
discretized network after BatchNorm recalibration, and under a mask for perturbation-based selection."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.kernels import fused
from pipeline.search.cell import Supernet, discretized_network
from pipeline.search.recalibrate import recalibrate_batchnorm
from pipeline.space.genotype import Genotype
from pipeline.training.device import autocast_context
from pipeline.training.metrics import MetricAccumulator
from pipeline.training.train import evaluate


def evaluate_supernet(model: torch.nn.Module, loader, device, amp: bool = False) -> dict:
    """Loss/top-1/top-5 of the supernet as trained (GDAS and DrNAS draw a sample per batch)."""
    model.eval()
    acc = MetricAccumulator()
    with torch.no_grad():
        for x, y in loader:
            if isinstance(model, Supernet):
                model.relaxation.resample(model.cell.alpha_dict())
            with autocast_context(device, amp):
                logits = model(x)
            acc.update(F.cross_entropy(logits.float(), y), logits, y)
    return acc.result()


def evaluate_discretized(supernet: Supernet, genotype: Genotype, train_loader, val_loader, device,
                         recalibration_batches: int, amp: bool = False) -> dict:
    """Loss/top-1/top-5 on `val_loader` of the discretized network (the supernet's weights, `genotype` as its
    activation) after its BatchNorm statistics are re-estimated on `recalibration_batches` training batches. Run
    on the eager fused path: a compiled kernel per genotype would cost more than it saves here."""
    mode = fused.get_mode()
    with fused.using("eager" if mode in ("auto", "compile") else mode):
        net = discretized_network(supernet, genotype)
        recalibrate_batchnorm(net, train_loader, recalibration_batches)
        return evaluate(net, val_loader, device, amp)


def selection_score(supernet: Supernet, val_loader, device, seed: int, amp: bool = False) -> float:
    """Validation top-1 of the (masked) supernet for perturbation-based selection; every candidate is measured
    with the same random draws (GDAS/DrNAS samples), and the search's random state is left as it was."""
    relaxation_state = supernet.relaxation.state_dict()  # GDAS: its own generator
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        try:
            return evaluate_supernet(supernet, val_loader, device, amp)["top1"]
        finally:
            supernet.relaxation.load_state_dict(relaxation_state)
