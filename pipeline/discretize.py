"""Discretization: the searched supernet becomes one concrete activation function.

Argmax per edge gives the genotype (with its learned betas); we report its simplified formula (text and LaTeX),
a warning when it is a known activation in disguise (checked numerically), a plot of the function and its
derivative beside ReLU and Swish, and the discretization gap: the validation accuracy of the supernet and of
the discretized network right after discretization, with the same network weights.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from pipeline.analysis import equivalence_warning, find_equivalent
from pipeline.cell import Supernet, discretized_network
from pipeline.checkpoint import CheckpointError
from pipeline.genotype import RELU, SWISH, Genotype
from pipeline.plots import plot_activations
from pipeline.search import SearchConfig, build_supernet, evaluate_supernet
from pipeline.train import evaluate


def save_supernet(supernet: Supernet, cfg: SearchConfig, path: Path) -> None:
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
    torch.save({"config": config, "state_dict": supernet.state_dict()}, path)


def load_supernet(path: Path, device: torch.device | str = "cpu") -> tuple[Supernet, SearchConfig]:
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        cfg = SearchConfig(**saved["config"])
        supernet = build_supernet(cfg)
        supernet.load_state_dict(saved["state_dict"])
    except FileNotFoundError:
        raise CheckpointError(f"no searched supernet at {path}: run the search stage first (dvc repro)") from None
    except Exception as err:
        raise CheckpointError(f"cannot load the searched supernet {path} ({type(err).__name__}: {err}); "
                              "delete it and rerun the search stage") from err
    return supernet.to(device), cfg


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
