"""A supernet site on the fused path: `MixedActivation.forward` as one fused cell (`pipeline.kernels.fused`).

Which candidates the kernel sees is decided here, per call: compiled, the full candidate set with the shrinking
mask as a runtime input, so that one kernel per space and operator set serves a whole shrinking schedule (and,
saved on disk, every later search of the space), until few candidates remain; eager, only the remaining
candidates; GDAS, only its sampled operator on each edge.
"""
from __future__ import annotations

import torch

from pipeline.kernels.fused import EdgeMask, compiles, fused_cell
from pipeline.space.genotype import edges_of

# Shrunk to this many candidates per edge (on average) or fewer, a compiled search runs the eager cell of the
# remaining candidates. Measured break-even against the full compiled kernel (bench/shrinking.py, search
# iteration, 2 threads): about 12 candidates for the complex space's 6 edges, about 7 for the simple space's 3.
EAGER_AT_MOST_PER_EDGE = 2


def supernet_site(site, weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """`MixedActivation.forward` on the fused path: the same cell as its `_mixed_edge` on every edge. `site` is
    the MixedActivation (its cell, its betas)."""
    cell = site.cell
    hard = cell.relaxation.hard
    # Compiled: the full candidate set with the shrinking mask as a runtime input, so one kernel per space and
    # operator set serves the whole schedule (and, saved on disk, every later search of it). Eager: only the
    # remaining candidates, which is cheaper when nothing is compiled, and once shrinking has left at most
    # EAGER_AT_MOST_PER_EDGE candidates per edge on average: the full kernel computes every candidate, masked or
    # not, while the eager cell's cost falls with each drop (docs/benchmarks.md).
    remaining = sum(len(cell.active(edge)) for edge in cell.candidates)
    full = not hard and compiles(x) and remaining > EAGER_AT_MOST_PER_EDGE * len(cell.candidates)
    candidates, ws, betas, masks = [], [], [], []
    for edge in edges_of(cell.space):
        names, w = cell.active(edge), weights[edge]
        if hard:  # GDAS: only the sampled operator; its one-hot weight is 1 - s + s, i.e. 1 up to rounding
            k = cell.relaxation.index[edge]
            names, w = (names[k],), (w[k:k + 1] if w.requires_grad else None)
        elif full and len(names) < len(cell.candidates[edge]):  # dropped candidates: weight 0, masked out
            w = w.new_zeros(len(cell.candidates[edge])).index_copy(0, cell.active_index(edge, w.device), w)
        if full:
            names = cell.candidates[edge]
            masks.append(EdgeMask(cell.keeps(edge), cell.mask(edge)))
        candidates.append(names)
        ws.append(w)
        betas.append([site.beta(edge, name) for name in names])
    return fused_cell(cell.space, candidates, ws, betas, x,
                      compile_as="operator" if hard else "cell" if full else "none", masks=masks if full else None)
