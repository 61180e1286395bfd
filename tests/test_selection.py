"""The select stage's rule: which search seed's function an optimizer x space retrains (fixed before any result)."""
import math
import statistics

import pytest

from pipeline.analysis.selection import choose, discretized_top1, selection_record


def found(top1, flagged=False, recalibrated=None, formula="f"):
    summary = {"formula": formula, "discretized_val_top1": top1, "depth_flagged": flagged,
               "depth_check": "flagged" if flagged else "ok", "supernet_val_top1": 50.0}
    if recalibrated is not None:
        summary["discretized_val_top1_recalibrated"] = recalibrated
    return summary


def test_the_best_unflagged_function_is_chosen_and_a_flagged_one_is_passed_over():
    assert choose({0: found(55.0), 1: found(57.0), 2: found(56.0)}) == 1
    assert choose({0: found(55.0), 1: found(70.0, flagged=True), 2: found(56.0)}) == 2  # a flag outranks top-1
    assert choose({0: found(55.0, flagged=True), 1: found(54.0, flagged=True)}) == 0  # all flagged: still the best


def test_recalibrated_top1_counts_where_it_was_measured_and_ties_go_to_the_lowest_seed():
    assert discretized_top1(found(50.0, recalibrated=58.0)) == 58.0
    assert discretized_top1(found(50.0, recalibrated=math.nan)) == 50.0
    assert choose({0: found(60.0, recalibrated=52.0), 1: found(55.0, recalibrated=56.0)}) == 1
    assert choose({3: found(55.0), 1: found(55.0), 2: found(55.0)}) == 1
    assert choose({0: found(math.nan), 1: found(10.0)}) == 1  # an unmeasured function never beats a measured one
    with pytest.raises(ValueError):
        choose({})


def test_the_record_lists_every_candidate_and_the_spread_over_seeds():
    record = selection_record("gdas", "complex", {1: found(60.0, formula="relu(x)"),
                                                  0: found(50.0, flagged=True, formula="sqrt(x)"),
                                                  2: found(56.0, formula="relu(x)")})
    assert (record["optimizer"], record["space"], record["search_seed"]) == ("gdas", "complex", 1)
    assert [c["search_seed"] for c in record["candidates"]] == [0, 1, 2]
    assert [c["selected"] for c in record["candidates"]] == [False, True, False]
    assert record["spread"] == {"search_seeds": 3, "distinct_functions": 2, "depth_flagged": 1,
                                "discretized_val_top1_min": 50.0, "discretized_val_top1_max": 60.0,
                                "discretized_val_top1_std": pytest.approx(statistics.stdev([50.0, 60.0, 56.0]))}
    single = selection_record("gdas", "complex", {0: found(math.nan)})
    assert single["candidates"][0]["discretized_val_top1"] is None  # JSON has no NaN
    assert single["spread"]["discretized_val_top1_min"] is None and single["spread"]["discretized_val_top1_std"] is None
