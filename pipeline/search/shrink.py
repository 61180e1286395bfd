"""Progressive shrinking of the candidate set (GRAFS, Strack et al. 2024): operators are dropped one at a time
until every edge keeps a single operator, so the supernet ends as the discretized network it will be judged as.

The schedule: the cell has C candidates on E edges, so it takes C - E drops. They start at epoch `start` (counted
from 0, applied before that epoch trains) and are spread log-spaced over the remaining epochs: drop i (of n) comes
at epoch start - 1 + floor(g_i), where g is the geometric sequence from 1 to epochs - start with n terms
(numpy.logspace). Many drops come early, when most candidates are clearly useless, and few late. For GRAFS's
110-candidate cell (4 unary edges x 23, 2 binary x 9) in 50 epochs from epoch 2: 104 drops at epochs 2-48,
19 of them at epoch 2 and one at 48 (its last geometric term is 47.99999..., which floor takes to 47).

Each drop masks, on the edge with the most remaining operators (the first such edge in the cell's edge order
on a tie), the remaining operator with the lowest operator weight (the first on a tie). Dropped operators are
gone: the relaxation renormalises over those that remain, and the fused cell is built for them only.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
import torch


def drops_per_epoch(epochs: int, start: Optional[int], candidates: int, edges: int) -> list[int]:
    """How many operators to drop before each epoch (index = epoch from 0); all zeros when `start` is None."""
    counts = [0] * epochs
    drops = candidates - edges
    if start is None or drops <= 0:
        return counts
    if not 0 <= start < epochs:
        raise ValueError(f"search.start_shrinking: {start} must be in [0, epochs={epochs}) or null (no shrinking)")
    span = epochs - start  # >= 1: the geometric sequence runs from 1 to span
    for epoch in (start - 1 + np.floor(np.logspace(0.0, np.log10(span), drops))).astype(int):
        counts[int(epoch)] += 1
    return counts


def choose_drops(weights: Mapping[str, Sequence[float]], masks: Mapping[str, Sequence[bool]],
                 count: int) -> list[tuple[str, int]]:
    """`count` drops as (edge, candidate index), in order. `weights[edge][k]` is candidate k's operator weight
    (any value for a dropped one), `masks[edge][k]` whether it still remains. Edges are tried in mapping order."""
    remaining = {edge: list(mask) for edge, mask in masks.items()}
    chosen = []
    for _ in range(count):
        edge = max(remaining, key=lambda e: sum(remaining[e]))  # max keeps the first of equals
        if sum(remaining[edge]) <= 1:
            raise ValueError("cannot drop an operator: every edge has a single one left")
        live = [k for k, keep in enumerate(remaining[edge]) if keep]
        k = min(live, key=lambda i: float(weights[edge][i]))  # min keeps the first of equals
        remaining[edge][k] = False
        chosen.append((edge, k))
    return chosen


def remaining_fraction(masks: Mapping[str, torch.Tensor | Sequence[bool]]) -> float:
    """Share of the droppable candidates (all but one per edge) that are still there: 1 before shrinking, 0 at
    the end."""
    sizes = [len(m) for m in masks.values()]
    left = [int(sum(bool(v) for v in m)) for m in masks.values()]
    droppable = sum(sizes) - len(sizes)
    return 1.0 if droppable == 0 else (sum(left) - len(left)) / droppable
