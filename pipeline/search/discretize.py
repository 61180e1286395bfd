"""Discretization: the searched supernet becomes one concrete activation function.

The genotype is the one the search selected (argmax or perturbation-based, at the best or last epoch), or the
supernet's argmax. The discretization gap is the validation accuracy of the supernet minus that of the discretized
network with the same network weights, measured twice: with the supernet's BatchNorm running statistics (gathered
under the mixed activation) and after recalibrating them on training batches for the discretized network
(`pipeline.search.recalibrate`). What the function is (formula, known activation in disguise, plot) is the
analysis layer's `describe_genotype`.
"""
from __future__ import annotations

from typing import Optional

from pipeline.search.cell import Supernet, discretized_network
from pipeline.search.loop import evaluate_discretized, evaluate_supernet
from pipeline.space.genotype import Genotype
from pipeline.training.train import evaluate


def discretize(supernet: Supernet, val_loader, device, amp: bool = False, *, genotype: Optional[Genotype] = None,
               train_loader=None, recalibration_batches: int = 0) -> tuple[Genotype, dict]:
    """The genotype (`genotype`, else the supernet's argmax) and its accuracies on `val_loader`: the supernet's,
    the discretized network's as is and, with a `train_loader` and `recalibration_batches` > 0, after BatchNorm
    recalibration, with both gaps (supernet minus discretized, top-1 points)."""
    genotype = genotype or supernet.genotype()
    before = evaluate_supernet(supernet, val_loader, device, amp)
    after = evaluate(discretized_network(supernet, genotype), val_loader, device, amp)
    out = {
        "supernet_val_top1": before["top1"], "supernet_val_top5": before["top5"],
        "discretized_val_top1": after["top1"], "discretized_val_top5": after["top5"],
        "discretization_gap_top1": before["top1"] - after["top1"],
    }
    if train_loader is not None and recalibration_batches > 0:
        recalibrated = evaluate_discretized(supernet, genotype, train_loader, val_loader, device,
                                            recalibration_batches, amp)
        out |= {"discretized_val_top1_recalibrated": recalibrated["top1"],
                "discretized_val_top5_recalibrated": recalibrated["top5"],
                "discretization_gap_top1_recalibrated": before["top1"] - recalibrated["top1"]}
    return genotype, out
