"""The results table as numbers: one row per activation, its statistics against ReLU and Swish, its rank.

Per network (columns prefixed `<network>_`): test top-1 and top-5 mean and sample std over the seeds that trained
normally (`seeds_ok`), `seeds` run, `failures` (diverged or failed to learn, never averaged in), `status`, the
steady-state time per epoch relative to ReLU, and per reference r in (relu, swish) the Welch comparison of top-1
(`vs_r_diff`, `vs_r_ci_low`, `vs_r_ci_high`, `vs_r_t`, `vs_r_df`, `vs_r_p`, `vs_r_p_holm`) and `verdict_vs_r`
(pipeline.analysis.stats). Holm's correction runs over every comparison in the table that feeds a verdict.
Rows are sorted by the mean top-1 on the ranking network (the deepest one evaluated), with every function that
failed on any seed of any network below every function that did not (`rank`); `rank_<network>` is the same
order on one network, for the transfer from the search network to deeper ones.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import pandas as pd

from pipeline.analysis.stats import FAILED, holm, searched_name_parts, verdict, welch
from pipeline.space.models import DEPTHS

REFERENCES = {"relu": "ReLU", "swish": "Swish"}
WITHIN_POINTS = 1.0  # a search "found a working function" when its retrained top-1 is at most this far below ReLU


def deepest(networks: Sequence[str]) -> str:
    return max(networks, key=DEPTHS.__getitem__)


def by_depth(networks: Sequence[str]) -> list[str]:
    return sorted(networks, key=DEPTHS.__getitem__)


def origin_text(name: str, origin: str, search_seed: int | None = None) -> str:
    if origin != "searched":
        return origin
    optimizer, space, seed = searched_name_parts(name)
    seed = search_seed if seed is None else seed
    return f"{optimizer} + {space}" + ("" if seed is None else f", search seed {seed}")


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else math.nan
    return mean, std


def _status(runs: list[dict]) -> str:
    counts = {}
    for run in runs:
        counts[run["status"]] = counts.get(run["status"], 0) + 1
    if set(counts) == {"ok"}:
        return "ok"
    return ", ".join(f"{status} {count}/{len(runs)}" for status, count in sorted(counts.items()) if status != "ok")


def _time_per_epoch(runs: list[dict]) -> float:
    """Mean steady-state seconds per epoch (first epoch left out: it also pays compilation and warm-up)."""
    times = [r["steady_epoch_time_s"] for r in runs if r["status"] != "diverged" and r.get("steady_epoch_time_s")]
    return sum(times) / len(times) if times else math.nan


def _top1_ok(runs: list[dict], activation: str, network: str) -> list[float]:
    return [r["test_top1"] for r in runs if r["activation"] == activation and r["network"] == network
            and r["status"] == "ok"]


def _compare(rows: list[dict], runs: list[dict], networks: Sequence[str]) -> None:
    """Welch comparisons against each reference present, Holm-corrected together, and their verdicts."""
    present = {row["activation"] for row in rows}
    tests = []  # (row, network, reference, comparison)
    for row in rows:
        for network in networks:
            for reference in REFERENCES:
                result = welch(_top1_ok(runs, row["activation"], network), _top1_ok(runs, reference, network)) \
                    if reference in present and reference != row["activation"] else None
                tests.append((row, network, reference, result))
    in_family = [result is not None and not row[f"{network}_failures"] for row, network, _, result in tests]
    adjusted = iter(holm([result.p for (_, _, _, result), used in zip(tests, in_family) if used]))
    for (row, network, reference, result), used in zip(tests, in_family):
        prefix = f"{network}_vs_{reference}"
        for field in ("diff", "ci_low", "ci_high", "t", "df", "p"):
            row[f"{prefix}_{field}"] = getattr(result, field) if result is not None else math.nan
        row[f"{prefix}_p_holm"] = next(adjusted) if used else math.nan
        if result is None:
            row[f"{network}_verdict_vs_{reference}"] = "reference" if reference == row["activation"] else ""
        else:
            row[f"{network}_verdict_vs_{reference}"] = verdict(result, row[f"{prefix}_p_holm"], REFERENCES[reference],
                                                               row[f"{network}_failures"], row[f"{network}_seeds"])


def _rank_key(failed: bool, mean: float) -> tuple:
    return failed, math.isnan(mean), -mean if not math.isnan(mean) else 0.0


def results_table(runs: list[dict], origins: Mapping[str, str], networks: Sequence[str],
                  discretized: Mapping[str, dict], formulas: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One row per activation, best first (see the module docstring). `discretized`: discretize.json per searched
    activation (or {"equivalence": ...} for custom ones); `formulas`: readable formulas (default: metrics.json's)."""
    relu_time = {n: _time_per_epoch([r for r in runs if r["activation"] == "relu" and r["network"] == n])
                 for n in networks}
    rows = []
    for name, origin in origins.items():
        mine = [r for r in runs if r["activation"] == name]
        if not mine:
            raise ValueError(f"no evaluation runs of activation {name!r} were found")
        found = discretized.get(name, {})
        optimizer, space, search_seed = searched_name_parts(name) if origin == "searched" else (None, None, None)
        search_seed = found.get("search_seed", search_seed)  # the select stage's choice for <optimizer>-<space>
        row = {"activation": name, "origin": origin_text(name, origin, search_seed),
               "formula": (formulas or {}).get(name, mine[0]["formula"]), "expanded_formula": mine[0]["formula"],
               "equivalence": found.get("equivalence") or "", "optimizer": optimizer, "space": space,
               "search_seed": search_seed, "supernet_val_top1": found.get("supernet_val_top1", math.nan),
               "discretized_val_top1": found.get("discretized_val_top1", math.nan),
               "discretization_gap": found.get("discretization_gap_top1", math.nan),
               "search_skipped_steps": found.get("search_skipped_steps", math.nan),
               "search_steps": found.get("search_steps", math.nan), "depth_check": found.get("depth_check") or ""}
        for network in networks:
            cell = [r for r in mine if r["network"] == network]
            ok = [r for r in cell if r["status"] == "ok"]
            for metric in ("top1", "top5"):
                row[f"{network}_{metric}_mean"], row[f"{network}_{metric}_std"] = _mean_std(
                    [r[f"test_{metric}"] for r in ok])
            row[f"{network}_seeds_ok"] = len(ok)
            row[f"{network}_seeds"] = len(cell)
            row[f"{network}_failures"] = sum(r["status"] in FAILED for r in cell)
            row[f"{network}_status"] = _status(cell)
            row[f"{network}_time_rel_relu"] = _time_per_epoch(cell) / relu_time[network] \
                if relu_time[network] and not math.isnan(relu_time[network]) else math.nan
        row["failures"] = sum(row[f"{network}_failures"] for network in networks)
        row["seeds"] = sum(row[f"{network}_seeds"] for network in networks)
        rows.append(row)
    _compare(rows, runs, networks)
    for network in networks:
        order = sorted(rows, key=lambda r: _rank_key(r[f"{network}_failures"] > 0, r[f"{network}_top1_mean"]))
        for position, row in enumerate(order, start=1):
            row[f"rank_{network}"] = position
    ranking = deepest(networks)
    rows.sort(key=lambda r: _rank_key(r["failures"] > 0, r[f"{ranking}_top1_mean"]))
    for position, row in enumerate(rows, start=1):
        row["rank"] = position
    return pd.DataFrame(rows)


def transfer_table(table: pd.DataFrame, networks: Sequence[str], search_network: str | None) -> pd.DataFrame:
    """Rank per network in depth order, and how far each function moves from the search network (or the
    shallowest one evaluated, if the search network was not) to the deepest: positive = moved up."""
    ordered = by_depth(networks)
    start = search_network if search_network in networks else ordered[0]
    transfer = table[["activation"] + [f"rank_{n}" for n in ordered]].copy()
    transfer["move"] = table[f"rank_{start}"] - table[f"rank_{ordered[-1]}"]
    transfer.attrs["from"], transfer.attrs["to"] = start, ordered[-1]
    return transfer


def search_summary(table: pd.DataFrame, networks: Sequence[str],
                   selections: Mapping[str, dict] | None = None) -> pd.DataFrame:
    """Per optimizer x space: its search seeds, how many distinct functions they found and how many the depth check
    flagged, the spread of their discretized validation top-1 (`selections`: the select stage's selection.json per
    retrained activation), and how many retrained functions (no failure, on the ranking network) came within
    WITHIN_POINTS of ReLU's mean top-1, with the best one's difference."""
    ranking = deepest(networks)
    searched = table[table["optimizer"].notna()]
    rows = []
    for (optimizer, space), group in searched.groupby(["optimizer", "space"], sort=False):
        close = (group["failures"] == 0) & (group[f"{ranking}_vs_relu_diff"] >= -WITHIN_POINTS)
        best = group.sort_values("rank").iloc[0]
        spread = (selections or {}).get(best["activation"], {}).get("spread", {})
        rows.append({"optimizer": optimizer, "space": space,
                     "search_seeds": spread.get("search_seeds", len(group)),
                     "distinct_functions": spread.get("distinct_functions", math.nan),
                     "depth_flagged": spread.get("depth_flagged", math.nan),
                     "discretized_val_top1_min": _number(spread.get("discretized_val_top1_min")),
                     "discretized_val_top1_max": _number(spread.get("discretized_val_top1_max")),
                     "retrained": len(group), "within_1_point_of_relu": int(close.sum()), "best": best["activation"],
                     "best_search_seed": best["search_seed"], "best_vs_relu": best[f"{ranking}_vs_relu_diff"],
                     "best_failures": int(best["failures"]), "best_seeds": int(best["seeds"])})
    return pd.DataFrame(rows, columns=["optimizer", "space", "search_seeds", "distinct_functions", "depth_flagged",
                                       "discretized_val_top1_min", "discretized_val_top1_max", "retrained",
                                       "within_1_point_of_relu", "best", "best_search_seed", "best_vs_relu",
                                       "best_failures", "best_seeds"])


def _number(value) -> float:
    return math.nan if value is None else float(value)
