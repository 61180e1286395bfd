"""Which operator each edge keeps: argmax of the operator weights, or perturbation-based (DARTS-PT).

Argmax trusts the alphas; the classic DARTS collapse is exactly where they mislead (the supernet learns while
its argmax does not). Perturbation-based selection (Wang et al. 2021, "Rethinking architecture selection in
differentiable NAS") asks the trained supernet instead: on each edge, remove one remaining operator at a time (mask
it; the relaxation renormalises the others) and measure the supernet; the edge keeps the operator whose removal
hurts the measure most. Edges are decided in the cell's edge order, each fixed to its choice before the next is
measured (DARTS-PT also fine-tunes the supernet between decisions; this does not).
"""
from __future__ import annotations

from typing import Callable

from pipeline.search.cell import Supernet
from pipeline.space.genotype import Genotype, edges_of

SELECTIONS = ("argmax", "perturbation")


def perturbation_genotype(supernet: Supernet, score: Callable[[Supernet], float]) -> tuple[Genotype, dict]:
    """The genotype DARTS-PT picks, and per edge {operator: score with that operator removed}. `score` measures
    the supernet as it is masked (higher is better, e.g. validation top-1). The masks are restored after."""
    cell = supernet.cell
    saved = {edge: cell.active(edge) for edge in edges_of(cell.space)}
    scores: dict[str, dict[str, float]] = {}
    # Every masked candidate set runs the supernet's one compiled kernel (the mask is its runtime input).
    try:
        for edge in edges_of(cell.space):
            remaining = cell.active(edge)
            scores[edge] = {}
            if len(remaining) > 1:
                for name in remaining:
                    cell.set_active(edge, [n for n in remaining if n != name])
                    scores[edge][name] = float(score(supernet))
                kept = min(remaining, key=lambda n: scores[edge][n])  # the first of equals
            else:
                kept = remaining[0]
            cell.set_active(edge, [kept])
        genotype = supernet.genotype()  # one candidate per edge now: its own name and learned beta
    finally:
        for edge, names in saved.items():
            cell.set_active(edge, names)
    return genotype, scores


def select_genotype(supernet: Supernet, selection: str, score: Callable[[Supernet], float]) -> tuple[Genotype, dict]:
    """(genotype, per-edge perturbation scores or {}) by `selection`: argmax | perturbation."""
    if selection == "argmax":
        return supernet.genotype(), {}
    if selection == "perturbation":
        return perturbation_genotype(supernet, score)
    raise ValueError(f"search.selection: {selection!r} is not one of {list(SELECTIONS)}")
