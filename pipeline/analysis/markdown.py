"""results.md: the ranked results table with verdicts, the rank transfer across networks and the per-search
summary, written from the numbers of pipeline.analysis.table."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import pandas as pd

from pipeline.analysis.stats import ALPHA
from pipeline.analysis.table import WITHIN_POINTS, by_depth, deepest

INTRO = (
    "Test accuracy (%) after retraining from scratch: mean ± sample std over the seeds that trained normally (n). "
    "Seeds that diverged or failed to learn are failures: counted in their own column, never averaged in, and a "
    "function with any failure ranks below every function without one. Rows are sorted by the mean top-1 on "
    "{network}. Verdicts: Welch's t-test of top-1 on {network} against ReLU and Swish, p-values Holm-corrected "
    "over {tests} (family-wise error {alpha}); the difference is shown as mean ± the "
    "half-width of its 95% confidence interval (Welch-Satterthwaite). n = 1 cannot be tested: too few seeds. "
    "Supernet and discretized val top-1 are measured on the search's architecture split; skipped search steps are "
    "those whose loss or gradients were not finite (not applied). Time/epoch vs ReLU "
    "leaves out the first epoch (compilation, warm-up). Depth at init: the discretize stage's check of a searched "
    "function on freshly initialised evaluation networks (docs/depth_check.md): the largest ratio of its per-block "
    "gradient norms, flagged above the threshold or when a short SGD run diverged. The retraining budget is "
    "short: measured against an 8x longer one (docs/science.md, 'Does the short budget rank like a long one'), it "
    "separates functions that train well from those several points behind, but the order among functions within "
    "about 1.5 points of each other did not hold, so read such differences as ties.")


def _num(value, digits: int = 2) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _row(cells: Sequence) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _header(columns: Sequence[str]) -> list[str]:
    return [_row(columns), "|" + "---|" * len(columns)]


def accuracy_cell(row, network: str) -> str:
    ok, status = row[f"{network}_seeds_ok"], row[f"{network}_status"]
    if ok == 0:
        return status
    mean, std = row[f"{network}_top1_mean"], row[f"{network}_top1_std"]
    spread = "" if math.isnan(std) else f" ± {std:.2f}"
    note = "" if status == "ok" else f"; {status}"
    return f"{mean:.2f}{spread} (n={ok}{note})"


def _skipped(row) -> str:
    """A searched function's skipped (non-finite) search steps out of all its search steps."""
    if math.isnan(row["search_skipped_steps"]):
        return "n/a"
    return f"{int(row['search_skipped_steps'])}/{int(row['search_steps'])}"


def _best_vs_relu(search) -> str:
    """The best function's difference to ReLU, unless it failed: survivors alone would flatter it."""
    if search["best_failures"]:
        return f"failed {search['best_failures']}/{search['best_seeds']}"
    return "n/a" if math.isnan(search["best_vs_relu"]) else f"{search['best_vs_relu']:+.2f}"


def _tests(table: pd.DataFrame) -> int:
    return int(sum(table[column].notna().sum() for column in table.columns if column.endswith("_p_holm")))


def search_seed_lines(selections: Mapping[str, dict]) -> list[str]:
    """Every search seed's found function with its search numbers and depth check, the retrained one marked."""
    if not selections:
        return []
    rule = next(iter(selections.values()))["rule"]
    lines = ["", "## Search seeds", "",
             f"Every search seed's function. One per optimizer and space is retrained, chosen before any retraining "
             f"by a fixed rule: {rule}.", ""]
    lines += _header(["activation", "search seed", "formula", "discretized val top-1 (BN recalibrated)",
                      "supernet val top-1",
                      "depth at init", "retrained"])
    for name, selection in selections.items():
        for c in selection["candidates"]:
            lines.append(_row([name, c["search_seed"], f"`{c['formula']}`", _num(c["discretized_val_top1"]),
                               _num(c["supernet_val_top1"]), c["depth_check"] or "", "yes" if c["selected"] else ""]))
    return lines


def results_markdown(table: pd.DataFrame, networks: Sequence[str], transfer: pd.DataFrame,
                     searches: pd.DataFrame, selections: Mapping[str, dict] | None = None) -> str:
    network = deepest(networks)
    ordered = by_depth(networks)
    lines = ["# Results", "", INTRO.format(network=network, alpha=ALPHA, tests=f"all {_tests(table)} testable comparisons of the table"
                                  if _tests(table) else "the testable comparisons (none here: two seeds or more needed)"), ""]
    columns = ["rank", "activation", "origin", "formula"] + [f"{n} top-1" for n in ordered] + [
        "failed", f"verdict vs ReLU ({network})", f"verdict vs Swish ({network})", "time/epoch vs ReLU",
        "supernet val top-1", "discretized val top-1", "skipped search steps", "equivalence", "depth at init"]
    lines += _header(columns)
    for _, row in table.iterrows():
        lines.append(_row([row["rank"], row["activation"], row["origin"], f"`{row['formula']}`"]
                          + [accuracy_cell(row, n) for n in ordered]
                          + [f"{row['failures']}/{row['seeds']}", row[f"{network}_verdict_vs_relu"],
                             row[f"{network}_verdict_vs_swish"], _num(row[f"{network}_time_rel_relu"]),
                             _num(row["supernet_val_top1"]), _num(row["discretized_val_top1"]),
                             _skipped(row), row["equivalence"], row["depth_check"]]))
    if len(ordered) > 1:
        start, end = transfer.attrs["from"], transfer.attrs["to"]
        lines += ["", "## Rank transfer", "",
                  f"Rank of each function on every evaluation network (1 = best, failures last), and how many places "
                  f"it moves from {start} (the search network, or the shallowest evaluated) to {end} "
                  "(positive = up). Verdicts against ReLU per network are in results.csv.", ""]
        lines += _header(["activation"] + [f"rank on {n}" for n in ordered] + [f"move {start} → {end}"])
        for _, row in transfer.iterrows():
            move = int(row["move"])
            lines.append(_row([row["activation"]] + [int(row[f"rank_{n}"]) for n in ordered]
                              + [f"{move:+d}" if move else "0"]))
    if len(searches):
        lines += ["", "## Searches", "",
                  f"Per optimizer and space: its search seeds, how many distinct functions they found and how many "
                  f"of those the depth check flagged, the range of their discretized validation top-1, and whether "
                  f"the retrained function trains on {network} without a failure and at most {WITHIN_POINTS:g} "
                  f"point below ReLU's mean top-1.", ""]
        lines += _header(["optimizer", "space", "search seeds", "distinct functions", "depth-flagged",
                          "discretized val top-1, BN recalibrated (min-max)", "retrained (search seed)",
                          f"within {WITHIN_POINTS:g} point of ReLU", f"vs ReLU ({network})"])
        for _, s in searches.iterrows():
            seed = "" if pd.isna(s["best_search_seed"]) else f" (s{int(s['best_search_seed'])})"
            lines.append(_row([s["optimizer"], s["space"], s["search_seeds"], _count(s["distinct_functions"]),
                               _count(s["depth_flagged"]),
                               f"{_num(s['discretized_val_top1_min'])}-{_num(s['discretized_val_top1_max'])}",
                               f"{s['best']}{seed}", f"{s['within_1_point_of_relu']}/{s['retrained']}",
                               _best_vs_relu(s)]))
    lines += search_seed_lines(selections or {})
    return "\n".join(lines) + "\n"


def _count(value) -> str:
    return "n/a" if pd.isna(value) else str(int(value))
