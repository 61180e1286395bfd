"""Discretization: the searched supernet becomes one concrete activation function.

Argmax per edge gives the genotype (with its learned betas); we report its simplified formula (text and LaTeX),
a warning when it is a known activation in disguise (checked numerically), a plot of the function and its
derivative beside ReLU and Swish, and the discretization gap: the validation accuracy of the supernet and of
the discretized network right after discretization, with the same network weights.
"""
from __future__ import annotations

import json
from pathlib import Path


from pipeline.analysis import equivalence_warning, find_equivalent
from pipeline.cell import Supernet, discretized_network
from pipeline.genotype import RELU, SWISH, Genotype
from pipeline.plots import plot_activations
from pipeline.search import evaluate_supernet
from pipeline.train import evaluate


def activation_function(genotype: Genotype):
    """The genotype as a plain float64 function of a tensor, for analysis and plots."""
    module = genotype.build().double()
    return lambda x: module(x.double())


def discretize(supernet: Supernet, val_loader, device, out_dir: Path, amp: bool = False) -> dict:
    """Write genotype.json, formula.txt, formula.tex, activation.png and discretize.json into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    genotype = supernet.genotype()
    fn = activation_function(genotype)
    before = evaluate_supernet(supernet, val_loader, device, amp)
    after = evaluate(discretized_network(supernet, genotype), val_loader, device, amp)
    equivalent = find_equivalent(fn)
    summary = {
        "genotype": genotype.to_dict(),
        "formula": genotype.formula(),
        "latex": genotype.latex(),
        "equivalence": equivalence_warning(fn),
        "equivalent_to": equivalent.name if equivalent else None,
        "supernet_val_top1": before["top1"], "supernet_val_top5": before["top5"],
        "discretized_val_top1": after["top1"], "discretized_val_top5": after["top5"],
        "discretization_gap_top1": before["top1"] - after["top1"],
    }
    genotype.save(out_dir / "genotype.json")
    (out_dir / "formula.txt").write_text(summary["formula"] + "\n")
    (out_dir / "formula.tex").write_text(summary["latex"] + "\n")
    plot_activations({f"searched: {summary['formula']}": fn, "ReLU": activation_function(RELU),
                      "Swish": activation_function(SWISH)}, out_dir / "activation.png")
    (out_dir / "discretize.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
