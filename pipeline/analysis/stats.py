"""Is a difference in test accuracy real? Welch's t-test, Holm's correction and a verdict in plain words.

Seed-to-seed spread on CIFAR-10 ResNets (0.2-1 point) is as large as the effect of an activation function, so every
comparison of an activation with a reference (ReLU, Swish) on one network is a Welch t-test of the final test top-1
of the seeds that trained normally:
- mean difference d = mean(a) - mean(b) with a 95% confidence interval d +- t(0.975, df) * se, where
  se = sqrt(var_a/n_a + var_b/n_b) and df is the Welch-Satterthwaite degrees of freedom (scipy.stats.ttest_ind);
- p-values of all comparisons in a table are corrected together with Holm's step-down method (controls the
  family-wise error rate; scipy.stats.false_discovery_control does Benjamini-Hochberg, a weaker guarantee);
- a verdict: "better/worse than ReLU (p = ..., +d +- half-width)" when the corrected p < ALPHA, otherwise
  "no difference detected". Fewer than two seeds on either side: "too few seeds", never a p-value.
Runs that diverged or failed to learn are failures, counted apart and never averaged in (no survivorship): a
function with failures gets "failed k/n" as its verdict, since the survivors alone would flatter it.
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import stats

ALPHA = 0.05  # family-wise error rate of the Holm-corrected comparisons
CONFIDENCE = 0.95
FAILED = ("diverged", "failed_to_learn")  # run statuses that count as failures
_SEARCHED_NAME = re.compile(r"^(?P<optimizer>[a-z0-9_]+)-(?P<space>[a-z0-9_]+)(?:-s(?P<seed>\d+))?$")


@dataclass(frozen=True)
class Comparison:
    """a vs b: mean difference with its confidence interval, Welch's t, df and the two-sided p-value.

    All nan when either side has fewer than two values (`too_few`), or when neither side varies (no test
    is possible: se = 0)."""

    n_a: int
    n_b: int
    diff: float
    ci_low: float
    ci_high: float
    t: float
    df: float
    p: float

    @property
    def too_few(self) -> bool:
        return min(self.n_a, self.n_b) < 2

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2


def welch(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Comparison:
    """Welch's unequal-variance t-test of mean(a) - mean(b) (scipy.stats.ttest_ind, equal_var=False)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("welch() takes the finite accuracies of the runs that trained normally; "
                         f"got a={a.tolist()}, b={b.tolist()}")
    diff = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
    nan = math.nan
    if min(len(a), len(b)) < 2 or (a.var() == 0 and b.var() == 0):
        return Comparison(len(a), len(b), diff, nan, nan, nan, nan, nan)
    centre = np.concatenate([a, b]).mean()  # shift-invariant; centring avoids scipy's cancellation in 92.1 - 92.0
    with warnings.catch_warnings():
        # one side without spread (identical accuracies on every seed) is exact, not a loss of precision
        warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
        result = stats.ttest_ind(a - centre, b - centre, equal_var=False)
    interval = result.confidence_interval(confidence)
    return Comparison(len(a), len(b), diff, float(interval.low), float(interval.high), float(result.statistic),
                      float(result.df), float(result.pvalue))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order; nan entries are no comparison and stay nan.

    Sorted ascending p_(1) <= ... <= p_(m): adjusted p_(i) = max over j <= i of min(1, (m - j + 1) * p_(j)).
    """
    p = [float(v) for v in p_values]
    tested = sorted((i for i, v in enumerate(p) if not math.isnan(v)), key=p.__getitem__)
    adjusted = [math.nan] * len(p)
    running = 0.0
    for rank, index in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def verdict(comparison: Comparison, p_adjusted: float, reference: str, failures: int = 0, seeds: int = 0,
            alpha: float = ALPHA) -> str:
    """The comparison in plain words, e.g. "better than ReLU (p = 0.01, +0.80 ± 0.50)"; `p_adjusted` is the
    Holm-corrected p-value; `failures` of `seeds` runs diverged or failed to learn."""
    if failures:
        return f"failed {failures}/{seeds}"
    if comparison.too_few:
        return f"too few seeds (n = {min(comparison.n_a, comparison.n_b)})"
    if math.isnan(p_adjusted):
        return "no seed-to-seed spread: cannot test"
    if p_adjusted >= alpha:
        return "no difference detected"
    direction = "better" if comparison.diff > 0 else "worse"
    return f"{direction} than {reference} ({format_p(p_adjusted)}, {comparison.diff:+.2f} ± {comparison.half_width:.2f})"


def verdict_class(text: str) -> str:
    """The verdict's kind: better, worse, no difference, failed, or too few (not testable: one seed, or no
    seed-to-seed spread at all); for colours and counts."""
    for kind in ("better", "worse", "failed", "too few"):
        if text.startswith(kind):
            return kind
    return "too few" if text.startswith("no seed-to-seed spread") else "no difference"


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, int]:
    """Spearman's rank correlation and its p-value over the pairs where both are finite; nan below 3 pairs."""
    pairs = [(u, v) for u, v in zip(x, y) if u is not None and v is not None and math.isfinite(u)
             and math.isfinite(v)]
    if len(pairs) < 3:
        return math.nan, math.nan, len(pairs)
    result = stats.spearmanr(*zip(*pairs))
    return float(result.statistic), float(result.pvalue), len(pairs)


def searched_name_parts(name: str) -> tuple[str, str, Optional[int]]:
    """`drnas-complex` -> ("drnas", "complex", None); `drnas-complex-s1` -> ("drnas", "complex", 1)."""
    match = _SEARCHED_NAME.match(name)
    if match is None:
        raise ValueError(f"a searched activation is named <optimizer>-<space> or <optimizer>-<space>-s<seed>, "
                         f"got {name!r}")
    seed = match["seed"]
    return match["optimizer"], match["space"], None if seed is None else int(seed)
