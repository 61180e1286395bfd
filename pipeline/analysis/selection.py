"""Which found function of an optimizer x space is retrained: one rule, fixed before any result was seen.

Every search seed of an optimizer and space finds a function (results/discretize/<optimizer>-<space>-s<seed>).
Retraining all of them on every network and seed is what costs the study most, so one is retrained, chosen on
what the search itself measured, never on retraining results:
1. functions the depth check flagged (docs/depth_check.md) are passed over while any other is left;
2. among the rest, the best discretized validation top-1 on the architecture split (after BatchNorm
   recalibration where it was measured), as DARTS-style searches select their epoch;
3. a tie goes to the lowest search seed.
The others are listed beside it in the report (docs/results.md), with the spread of their search metrics.
"""
from __future__ import annotations

import math
import statistics
from typing import Mapping

RULE = ("depth check not flagged, then the best discretized validation top-1 (BatchNorm recalibrated), then the "
        "lowest search seed")


def discretized_top1(summary: Mapping) -> float:
    """The discretized network's validation top-1 the rule compares: after BatchNorm recalibration where the
    discretize stage measured it, else with the supernet's statistics; NaN when neither is a number."""
    for key in ("discretized_val_top1_recalibrated", "discretized_val_top1"):
        value = summary.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
    return math.nan


def choose(candidates: Mapping[int, Mapping]) -> int:
    """The search seed whose function is retrained, from each seed's discretize.json (see the module's rule)."""
    if not candidates:
        raise ValueError("no search seed to choose from")

    def key(seed: int) -> tuple:
        summary = candidates[seed]
        score = discretized_top1(summary)
        return (bool(summary.get("depth_flagged")), -score if math.isfinite(score) else math.inf, seed)

    return min(candidates, key=key)


def selection_record(optimizer: str, space: str, candidates: Mapping[int, Mapping]) -> dict:
    """selection.json: the chosen seed, the rule, every candidate's search numbers and the spread over seeds."""
    chosen = choose(candidates)
    rows = [{"search_seed": seed, "formula": summary.get("formula"),
             "discretized_val_top1": discretized_top1(summary),
             "supernet_val_top1": summary.get("supernet_val_top1"),
             "depth_check": summary.get("depth_check"), "depth_flagged": bool(summary.get("depth_flagged")),
             "equivalent_to": summary.get("equivalent_to"), "selected": seed == chosen}
            for seed, summary in sorted(candidates.items())]
    scores = [row["discretized_val_top1"] for row in rows if math.isfinite(row["discretized_val_top1"])]
    spread = {"search_seeds": len(rows), "distinct_functions": len({row["formula"] for row in rows}),
              "depth_flagged": sum(row["depth_flagged"] for row in rows),
              "discretized_val_top1_min": min(scores) if scores else None,
              "discretized_val_top1_max": max(scores) if scores else None,
              "discretized_val_top1_std": statistics.stdev(scores) if len(scores) > 1 else None}
    return {"optimizer": optimizer, "space": space, "search_seed": chosen, "rule": RULE, "spread": spread,
            "candidates": [{key: (None if isinstance(value, float) and math.isnan(value) else value)
                            for key, value in row.items()} for row in rows]}
