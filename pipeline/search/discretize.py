"""Discretization: the searched supernet becomes one concrete activation function.

Argmax per edge gives the genotype (with its learned betas); the discretization gap is the validation accuracy of
the supernet and of the discretized network right after discretization, with the same network weights. What the
function is (formula, known activation in disguise, plot) is the analysis layer's `describe_genotype`.
"""
from __future__ import annotations

from pipeline.search.cell import Supernet, discretized_network
from pipeline.search.loop import evaluate_supernet
from pipeline.space.genotype import Genotype
from pipeline.training.train import evaluate


def discretize(supernet: Supernet, val_loader, device, amp: bool = False) -> tuple[Genotype, dict]:
    """The genotype and its accuracies: supernet and discretized network on `val_loader`, and their gap."""
    genotype = supernet.genotype()
    before = evaluate_supernet(supernet, val_loader, device, amp)
    after = evaluate(discretized_network(supernet, genotype), val_loader, device, amp)
    return genotype, {
        "supernet_val_top1": before["top1"], "supernet_val_top5": before["top5"],
        "discretized_val_top1": after["top1"], "discretized_val_top5": after["top5"],
        "discretization_gap_top1": before["top1"] - after["top1"],
    }
