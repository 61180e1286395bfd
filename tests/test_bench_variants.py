"""bench/budget_ranking.py and bench/search_variants.py: the rankings, Spearman's rho, the variants' configs and
tables, on made-up records (the training runs themselves are train_model's, tested elsewhere)."""
import csv
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import budget_ranking, search_variants  # noqa: E402
from stages.common import study_params  # noqa: E402


def record(activation, budget, seed, top1, status="ok"):
    return {"activation": activation, "budget": budget, "seed": seed, "top1": top1, "status": status}


def test_rankings_and_spearman_against_a_hand_computation():
    short = {"relu": (50, 52), "swish": (49, 51), "a": (40, 42), "b": (45, 45), "c": (30, 30)}
    long = {"relu": (70, 72), "swish": (73, 73), "a": (60, 60), "b": (50, 52), "c": (55, 55)}
    records = [record(a, "short", s, v[s]) for a, v in short.items() for s in (0, 1)]
    records += [record(a, "long", s, v[s]) for a, v in long.items() for s in (0, 1)]
    records.append(record("c", "long", 2, float("nan"), status="diverged"))  # failures are not averaged in
    summary = budget_ranking.rankings(records)
    assert summary["means"]["short"]["relu"] == 51 and summary["means"]["long"]["c"] == 55
    assert summary["ranks"]["short"] == {"relu": 1, "swish": 2, "b": 3, "a": 4, "c": 5}
    assert summary["ranks"]["long"] == {"swish": 1, "relu": 2, "a": 3, "c": 4, "b": 5}
    # No ties: rho = 1 - 6 sum d^2 / (n (n^2 - 1)); d = 1, 0 (relu 1-2, swish 2-1), b 3-5, a 4-3, c 5-4.
    d2 = 1 + 1 + 4 + 1 + 1
    assert summary["spearman_rho"] == pytest.approx(1 - 6 * d2 / (5 * 24))
    text = budget_ranking.markdown(records, summary)
    assert "Spearman's rho (short vs long ranking): 0.600" in text


def test_fewer_than_three_activations_give_no_rho():
    records = [record("relu", b, 0, 50.0) for b in ("short", "long")] + [record("swish", "short", 0, 49.0)]
    assert budget_ranking.rankings(records)["spearman_rho"] is None


def test_variants_change_one_thing_each():
    params = study_params(check_paths=False)
    default = search_variants.variant_config(params, "default", "simple")
    assert default == params.search.config("drnas", "simple", params.search_seed(0), "cpu")
    shrink = search_variants.variant_config(params, "shrink-from-1", "simple")
    assert shrink.start_shrinking == 1 and shrink.model_copy(update={"start_shrinking": 2}) == default
    no_kl = search_variants.variant_config(params, "no-kl", "complex")
    assert no_kl.drnas.regularizer == "none" and no_kl.drnas.reg_scale == default.drnas.reg_scale
    assert search_variants.variant_config(params, "resnet20", "simple").network == "resnet20"


def test_a_function_found_twice_is_retrained_once_and_shown_on_both_rows():
    found = {"variant": "default", "space": "simple", "network": "resnet8", "images": 2500, "search_s": 100.0,
             "formula": "relu(x)", "depth": "ok (x12)"}
    searches = [found, found | {"variant": "no-kl"}]
    retrains = [{"formula": "relu(x)", "seed": s, "status": "ok", "top1": t} for s, t in ((1, 51.0), (0, 49.0))]
    text = search_variants.markdown(searches, retrains)
    assert text.count("| 49.00 / 51.00 | 50.00 |") == 2


def test_runs_are_keyed_by_network_and_a_set_reads_only_its_own_records():
    run = {"activation": "relu", "budget": "long", "seed": 1}
    assert budget_ranking.run_id(run, "resnet8") != budget_ranking.run_id(run, "resnet20")
    records = [record("relu", "short", 0, 50.0) | {"network": "resnet20"},
               record("relu", "short", 0, 40.0) | {"network": "resnet8"},
               record("max(elu(elu),sqrt)", "short", 0, 30.0) | {"network": "resnet20"}]
    kept = budget_ranking.selected(records, budget_ranking.SETS["reference-run"], "resnet20")
    assert [r["top1"] for r in kept] == [50.0]


def test_a_log_written_before_ids_carried_the_network_is_still_recognised():
    old = {"activation": "relu", "budget": "short", "seed": 0, "network": "resnet8", "id": "relu_short_s0"}
    new = {"activation": "swish", "budget": "long", "seed": 1, "network": "resnet20"}
    new["id"] = budget_ranking.run_id(new, "resnet20")
    assert budget_ranking.finished([old, new]) == {budget_ranking.run_id(old, "resnet8"), new["id"]}
    assert budget_ranking.run_id(old, "resnet8") != old["id"]


def test_the_reference_run_set_is_the_committed_reports_best_and_worst_searched_function():
    rows = list(csv.DictReader((ROOT / "reports" / "results.csv").open()))
    searched = sorted((r for r in rows if r["origin"] != "baseline"), key=lambda r: -float(r["resnet20_top1_mean"]))
    expected = {searched[0]["formula"], searched[-1]["formula"]}
    names = budget_ranking.SETS["reference-run"]
    assert names[:2] == ("relu", "swish")
    assert {budget_ranking.ACTIVATIONS[n].formula() for n in names[2:]} == expected
    assert all(n in budget_ranking.ACTIVATIONS for s in budget_ranking.SETS.values() for n in s)


def test_the_2026_12_03_set_holds_the_functions_docs_report_its_resnet20_results_for():
    # The committed reports moved on to a later run; the documented long-budget results keep their own set, whose
    # formulas must be the ones science.md names in that section (a renamed or edited genotype would break it).
    text = (ROOT / "docs" / "science.md").read_text()
    section = text[text.index("### On ResNet-20: the reference run's functions"):]
    section = section[:section.index("\n## ")]
    assert "--set reference-run-2026-12-03" in section
    names = budget_ranking.SETS["reference-run-2026-12-03"]
    assert names[:2] == ("relu", "swish")
    formulas = [budget_ranking.ACTIVATIONS[n].formula() for n in names[2:]]
    assert formulas == ["max(gelu(x), leaky_relu(x))", "elu(x)*sigmoid(tanh(min(tanh(x), asinh(x))))"]
    assert all(f"`{f}`" in section for f in formulas)
