"""Significance, verdicts, ranking and transfer, on hand-made results whose statistics are computed here by hand."""
import json
import math

import pytest
import sympy
from scipy import stats as scipy_stats

from pipeline.analysis.report import write_report
from pipeline.analysis.selection import selection_record
from pipeline.analysis.stats import Comparison, holm, searched_name_parts, spearman, verdict, verdict_class, welch
from pipeline.analysis.table import results_table, search_summary, transfer_table
from pipeline.analysis.verdict_plots import plot_rank_transfer, plot_search_vs_retrained, plot_verdicts
from pipeline.space.genotype import RELU, SWISH, Genotype

NETWORKS = ("resnet8", "resnet20", "resnet56")
# activation -> network -> per-seed top-1 (None: the run diverged, so no accuracy)
TOP1 = {
    "relu": {"resnet8": [80.0, 80.5, 81.0], "resnet20": [90.0, 90.4, 90.2], "resnet56": [92.0, 92.3, 92.1]},
    "swish": {"resnet8": [80.4, 80.9, 81.1], "resnet20": [90.3, 90.1, 90.6], "resnet56": [92.2, 92.0, 92.4]},
    # clearly better everywhere: +3 points with the same spread
    "darts-simple-s1": {"resnet8": [83.0, 83.5, 84.0], "resnet20": [93.0, 93.4, 93.2], "resnet56": [95.0, 95.3, 95.1]},
    # ReLU's numbers exactly: identical distributions
    "darts-simple-s2": {"resnet8": [80.0, 80.5, 81.0], "resnet20": [90.0, 90.4, 90.2], "resnet56": [92.0, 92.3, 92.1]},
    # best mean of all on resnet56, but one seed diverged there: must rank below every function without failures
    "gdas-simple": {"resnet8": [82.0, 82.2, 82.4], "resnet20": [91.0, 91.1, 91.2], "resnet56": [99.0, 99.0, None]},
}
GENOTYPES = {"relu": RELU, "swish": SWISH,
             "darts-simple-s1": Genotype("simple", ("relu", "gelu", "sigmul"), (None, None, None)),
             "darts-simple-s2": Genotype("simple", ("identity", "tanh", "mul"), (None, None, None)),
             "gdas-simple": Genotype("simple", ("elu", "zero", "left"), (None, None, None))}
ORIGINS = {"relu": "baseline", "swish": "baseline", "darts-simple-s1": "searched", "darts-simple-s2": "searched",
           "gdas-simple": "searched"}
SUPERNET = {"darts-simple-s1": 70.0, "darts-simple-s2": 60.0, "gdas-simple": 65.0}


def make_runs(top1=TOP1, networks=NETWORKS):
    return [{"activation": name, "network": network, "seed": seed, "formula": GENOTYPES[name].formula(),
             "status": "diverged" if value is None else "ok", "test_top1": value,
             "test_top5": None if value is None else 99.0, "steady_epoch_time_s": 10.0, "epochs": 2}
            for name, per_network in top1.items() for network in networks
            for seed, value in enumerate(per_network[network])]


def write_results(root, top1=TOP1, networks=NETWORKS):
    """results/ as the evaluate, discretize and search stages leave it, for write_report."""
    for run in make_runs(top1, networks):
        folder = root / "evaluate" / run["activation"] / run["network"] / f"seed{run['seed']}"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps(run))
        (folder / "history.csv").write_text("epoch,train_loss,test_top1\n1,2.0,50.0\n2,1.5,"
                                            f"{run['test_top1'] or 'nan'}\n")
        GENOTYPES[run["activation"]].save(folder / "genotype.json")
    for name, supernet in SUPERNET.items():  # as the select stage leaves them: here one search seed per name
        optimizer, space, search_seed = searched_name_parts(name)
        search_seed = search_seed or 0
        found = {"formula": GENOTYPES[name].formula(), "equivalence": None, "supernet_val_top1": supernet,
                 "discretized_val_top1": supernet - 5, "discretization_gap_top1": 5.0, "depth_check": "ok: x2",
                 "depth_flagged": False}
        folder = root / "select" / name
        folder.mkdir(parents=True)
        (folder / "selection.json").write_text(json.dumps(selection_record(optimizer, space, {search_seed: found})))
        (folder / "discretize.json").write_text(json.dumps(found | {"search_seed": search_seed}))
        GENOTYPES[name].save(folder / "genotype.json")
        history = [{"epoch": e, "val_top1": 40.0 + e, "operator_weights": {"b1": {"add": 0.5, "mul": 0.5}},
                    "entropy": {"b1": 1.0}} for e in (1, 2)]
        search = root / "search" / f"{name}-s{search_seed}"
        search.mkdir(parents=True)
        (search / "history.json").write_text(json.dumps(history))
        (search / "summary.json").write_text(json.dumps({"skipped_steps": 0, "steps": 100}))
    return root


def table(top1=TOP1, networks=NETWORKS):
    discretized = {name: {"supernet_val_top1": value} for name, value in SUPERNET.items()}
    return results_table(make_runs(top1, networks), ORIGINS, networks, discretized).set_index("activation")


def test_welch_t_df_and_interval_equal_a_hand_computation():
    a, b = [1.0, 2.0, 3.5], [0.0, 1.0, 1.2, 0.3]
    mean_a, mean_b = sum(a) / 3, sum(b) / 4
    var_a = sum((v - mean_a) ** 2 for v in a) / 2
    var_b = sum((v - mean_b) ** 2 for v in b) / 3
    se2 = var_a / 3 + var_b / 4
    t = (mean_a - mean_b) / math.sqrt(se2)
    df = se2 ** 2 / ((var_a / 3) ** 2 / 2 + (var_b / 4) ** 2 / 3)
    p = 2 * scipy_stats.t.sf(abs(t), df)
    half = scipy_stats.t.ppf(0.975, df) * math.sqrt(se2)
    result = welch(a, b)
    assert (result.t, result.df, result.p) == pytest.approx((t, df, p), rel=1e-12)
    assert (result.diff, result.ci_low, result.ci_high) == pytest.approx(
        (mean_a - mean_b, mean_a - mean_b - half, mean_a - mean_b + half), rel=1e-12)
    assert result.half_width == pytest.approx(half, rel=1e-12)


def test_holm_adjusts_a_borderline_p_value_as_computed_by_hand():
    # sorted: 0.01 x 4 = 0.04; 0.02 x 3 = 0.06; 0.03 x 2 = 0.06 (stays >= previous); 0.04 x 1 -> max(0.06, 0.04)
    p = [0.03, math.nan, 0.01, 0.04, 0.02]
    assert holm(p)[0] == pytest.approx(0.06) and math.isnan(holm(p)[1])
    assert holm(p)[2:] == pytest.approx([0.04, 0.06, 0.06])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1
    # the borderline 0.03 < 0.05 alone is "better"; after Holm it is 0.06, "no difference detected"
    borderline = Comparison(3, 3, 0.5, 0.1, 0.9, 3.0, 4.0, 0.03)
    assert verdict(borderline, 0.03, "ReLU").startswith("better than ReLU (p = 0.03")
    assert verdict(borderline, holm(p)[0], "ReLU") == "no difference detected"


def test_clearly_better_function_gets_a_small_p_and_better():
    row = table().loc["darts-simple-s1"]
    diff, half = 3.0, scipy_stats.t.ppf(0.975, 4) * math.sqrt(2 * 0.0233333333333 / 3)  # equal variances: df = 4
    assert row["resnet56_vs_relu_diff"] == pytest.approx(diff)
    assert row["resnet56_vs_relu_df"] == pytest.approx(4.0)
    assert row["resnet56_vs_relu_p_holm"] < 0.001
    assert row["resnet56_verdict_vs_relu"] == f"better than ReLU (p < 0.001, +3.00 ± {half:.2f})"
    assert row["resnet56_verdict_vs_swish"].startswith("better than Swish")


def test_identical_distributions_give_no_difference_detected():
    row = table().loc["darts-simple-s2"]
    assert row["resnet56_vs_relu_diff"] == 0.0 and row["resnet56_vs_relu_p"] == pytest.approx(1.0)
    assert [row[f"{n}_verdict_vs_relu"] for n in NETWORKS] == ["no difference detected"] * 3


def test_a_failed_seed_is_shown_and_ranked_below_every_function_without_failures():
    rows = table()
    failed = rows.loc["gdas-simple"]
    assert failed["resnet56_top1_mean"] == pytest.approx(99.0)  # the best mean of the survivors...
    assert (failed["failures"], failed["seeds"], failed["resnet56_failures"]) == (1, 9, 1)
    assert failed["resnet56_verdict_vs_relu"] == "failed 1/3"
    assert math.isfinite(failed["resnet20_vs_relu_p_holm"])  # no failure on resnet20: tested there as usual
    assert failed["rank"] == len(rows) and failed["rank_resnet56"] == len(rows)  # ...and still ranked last
    assert list(rows.index[:3]) == ["darts-simple-s1", "swish", "relu"]  # by resnet56 mean: 95.13 > 92.2 > 92.13


def test_failed_comparisons_stay_out_of_the_holm_family():
    rows = table()
    assert math.isnan(rows.loc["gdas-simple", "resnet56_vs_relu_p_holm"])
    family = [rows.loc[a, f"{n}_vs_{r}_p"] for a in rows.index for n in NETWORKS for r in ("relu", "swish")
              if a != r and not (a == "gdas-simple" and n == "resnet56")]
    assert len(family) == 22  # 5 activations x 3 networks x 2 references, minus 6 self-comparisons, minus 2 failed
    expected = dict(zip(family, holm(family)))
    assert rows.loc["darts-simple-s2", "resnet8_vs_swish_p_holm"] == pytest.approx(
        expected[rows.loc["darts-simple-s2", "resnet8_vs_swish_p"]])


def test_one_seed_says_too_few_seeds_instead_of_a_p_value():
    one_seed = {name: {n: values[:1] for n, values in per_network.items()} for name, per_network in TOP1.items()}
    rows = table(one_seed)
    assert rows.loc["darts-simple-s1", "resnet56_verdict_vs_relu"] == "too few seeds (n = 1)"
    assert math.isnan(rows.loc["darts-simple-s1", "resnet56_vs_relu_p"])
    assert verdict_class("too few seeds (n = 1)") == "too few"


def test_transfer_moves_from_the_search_network_to_the_deepest():
    rows = table().reset_index()
    transfer = transfer_table(rows, NETWORKS, "resnet8").set_index("activation")
    # resnet8 means: s1 83.5, gdas 82.2, swish 80.8, relu = s2 80.5 (tie: params order); resnet56: gdas failed, last
    assert transfer.loc["gdas-simple", ["rank_resnet8", "rank_resnet56", "move"]].tolist() == [2, 5, -3]
    assert transfer.loc["swish", ["rank_resnet8", "rank_resnet56", "move"]].tolist() == [3, 2, 1]
    assert transfer_table(rows, NETWORKS, "resnet110").attrs["from"] == "resnet8"  # not evaluated: shallowest


def test_search_summary_counts_seeds_within_one_point_of_relu():
    summary = search_summary(table().reset_index(), NETWORKS).set_index(["optimizer", "space"])
    assert summary.loc[("darts", "simple"), ["search_seeds", "within_1_point_of_relu", "best"]].tolist() == [
        2, 2, "darts-simple-s1"]
    assert summary.loc[("gdas", "simple"), ["search_seeds", "within_1_point_of_relu"]].tolist() == [1, 0]  # failed


def test_searched_names_with_and_without_a_search_seed():
    assert searched_name_parts("drnas-complex") == ("drnas", "complex", None)
    assert searched_name_parts("drnas-complex-s12") == ("drnas", "complex", 12)
    with pytest.raises(ValueError, match="<optimizer>-<space>-s<seed>"):
        searched_name_parts("drnas_complex")


def test_spearman_needs_three_pairs_and_skips_missing_values():
    assert spearman([1, 2, 3, math.nan], [1, 3, 2, 5.0])[::2] == (pytest.approx(0.5), 3)
    assert math.isnan(spearman([1, 2], [2, 1])[0])


def test_report_summary_has_headline_numbers_only_and_readable_formulas(tmp_path):
    results = write_results(tmp_path / "results")
    summary = write_report(results, tmp_path / "reports", ORIGINS, NETWORKS, (0, 1, 2), "resnet8")
    assert summary["network"] == "resnet56"
    assert summary["activations"]["gdas-simple"] == {
        "top1": 99.0, "vs_relu": round(99.0 - (92.0 + 92.3 + 92.1) / 3, 3),
        "p_vs_relu": None, "verdict": "failed 1/3", "failures": 1, "seeds": 9, "rank": 5, "skipped_steps": 0}
    # two functions of darts-simple retrained (each its own single-seed selection), both within 1 point of ReLU
    assert summary["searches"] == {
        "darts-simple": {"search_seeds": 1, "distinct_functions": 1, "depth_flagged": 0, "within_1_point_of_relu": 2},
        "gdas-simple": {"search_seeds": 1, "distinct_functions": 1, "depth_flagged": 0, "within_1_point_of_relu": 0}}
    markdown = (tmp_path / "reports" / "results.md").read_text()
    assert "`gelu(x)*sigmoid(relu(x))`" in markdown and "`elu(x)`" in markdown and "Piecewise" not in markdown
    assert "| gdas-simple | 2 | 2 | 5 | -3 |" in markdown
    assert "| darts | simple | 1 | 1 | 0 | 65.00-65.00 | darts-simple-s1 (s1) | 2/2 | +3.00 |" in markdown
    assert "| gdas | simple | 1 | 1 | 0 | 60.00-60.00 | gdas-simple (s0) | 0/1 | failed 1/9 |" in markdown  # not +6.87
    assert "| gdas-simple | 0 | `elu(x)` | 60.00 | 65.00 | ok: x2 | yes |" in markdown
    for name in ("activations.png", "search_vs_retrained.png", "rank_transfer.png"):
        assert (tmp_path / "reports" / "figures" / name).stat().st_size > 10_000, name


@pytest.mark.parametrize("genotype, readable", [
    (RELU, "relu(x)"), (SWISH, "x*sigmoid(x)"), (GENOTYPES["darts-simple-s1"], "gelu(x)*sigmoid(relu(x))"),
    (GENOTYPES["gdas-simple"], "elu(x)"),
    (Genotype("complex", ("relu", "shift", "mul", "silu", "softplus", "add"), (None, 0.5, None, None, None, None)),
     "silu((x + 0.5)*relu(x)) + softplus(x)")])
def test_formula_names_known_activations_and_means_the_expanded_one(genotype, readable):
    assert genotype.formula() == readable
    x = sympy.Symbol("x", real=True)
    definitions = {"relu": lambda u: sympy.Max(u, 0), "gelu": lambda u: u * (1 + sympy.erf(u / sympy.sqrt(2))) / 2,
                   "elu": lambda u: sympy.Piecewise((u, u > 0), (sympy.exp(u) - 1, True)),
                   "silu": lambda u: u / (1 + sympy.exp(-u)), "softplus": lambda u: sympy.log(1 + sympy.exp(u)),
                   "sigmoid": lambda u: 1 / (1 + sympy.exp(-u))}
    named = sympy.sympify(readable, locals={"x": x} | {name: sympy.Lambda(x, f(x)) for name, f in definitions.items()})
    expanded = genotype.expr().subs(sympy.Function("sigmoid"), sympy.Lambda(x, definitions["sigmoid"](x)))
    for value in (-2.5, -0.3, 0.0, 0.7, 3.0):
        assert float(named.subs(x, value)) == pytest.approx(float(expanded.subs(x, value)), rel=1e-9, abs=1e-12)


def test_figure_inputs_are_checked_with_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"unknown verdict classes \['great'\]"):
        plot_verdicts({"f": (RELU.function(), "great")}, {}, tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"one rank per network \['resnet8', 'resnet20'\]"):
        plot_rank_transfer({"relu": [1]}, {"relu": "reference"}, ["resnet8", "resnet20"], tmp_path / "r.png")
    with pytest.raises(ValueError, match="at least one search signal"):
        plot_search_vs_retrained([], "resnet20", 90.0, {}, tmp_path / "s.png")
