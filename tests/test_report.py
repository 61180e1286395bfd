"""The results table, DVC metric and figures, from hand-made stage outputs in tmp_path."""
import json
import logging
import math

import pandas as pd
import pytest

from pipeline.space.genotype import RELU, SWISH, Genotype
from pipeline.analysis.markdown import results_markdown
from pipeline.analysis.selection import selection_record
from pipeline.analysis.report import ReportError, read_runs, write_report
from pipeline.analysis.table import results_table, search_summary, transfer_table

NETWORKS = ("resnet8", "resnet20")
SEEDS = (0, 1)
SEARCHED = Genotype("simple", ("identity", "tanh", "mul"), (None, None, None))  # x*tanh(x)
ORIGINS = {"relu": "baseline", "swish": "baseline", "darts-simple": "searched", "boom": "custom"}
FORMULAS = {"relu": RELU.formula(), "swish": SWISH.formula(), "darts-simple": SEARCHED.formula(), "boom": "1000*x"}
# (activation, network, seed) -> (status, top1, top5, seconds per epoch)
RUNS = {
    ("relu", "resnet8", 0): ("ok", 80.0, 98.0, 10.0), ("relu", "resnet8", 1): ("ok", 82.0, 99.0, 12.0),
    ("relu", "resnet20", 0): ("ok", 90.0, 99.5, 20.0), ("relu", "resnet20", 1): ("ok", 91.0, 99.7, 20.0),
    ("swish", "resnet8", 0): ("ok", 81.0, 98.5, 16.5), ("swish", "resnet8", 1): ("ok", 83.0, 98.9, 16.5),
    ("swish", "resnet20", 0): ("ok", 90.5, 99.6, 30.0), ("swish", "resnet20", 1): ("failed_to_learn", 12.0, 55.0, 30.0),
    ("darts-simple", "resnet8", 0): ("ok", 79.0, 97.0, 22.0), ("darts-simple", "resnet8", 1): ("ok", 79.0, 97.0, 22.0),
    ("darts-simple", "resnet20", 0): ("ok", 88.0, 99.0, 40.0),
    ("darts-simple", "resnet20", 1): ("ok", 89.0, 99.2, 40.0),
    ("boom", "resnet8", 0): ("diverged", math.nan, math.nan, 1.0), ("boom", "resnet8", 1): ("diverged", math.nan,
                                                                                          math.nan, 1.0),
    ("boom", "resnet20", 0): ("diverged", math.nan, math.nan, 2.0), ("boom", "resnet20", 1): ("diverged", math.nan,
                                                                                            math.nan, 2.0),
}
EPOCHS = 3


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.fixture
def results(tmp_path):
    """results/ as the evaluate, discretize and search stages leave it."""
    root = tmp_path / "results"
    for (activation, network, seed), (status, top1, top5, seconds) in RUNS.items():
        folder = root / "evaluate" / activation / network / f"seed{seed}"
        epochs_run = 1 if status == "diverged" else EPOCHS
        write_json(folder / "metrics.json", {
            "activation": activation, "origin": ORIGINS[activation], "network": network, "seed": seed,
            "formula": FORMULAS[activation], "status": status, "test_top1": None if math.isnan(top1) else top1,
            "test_top5": None if math.isnan(top5) else top5, "epoch_time_s": seconds + 5.0,
            "steady_epoch_time_s": seconds, "epochs": EPOCHS,
            "epochs_run": epochs_run})
        pd.DataFrame({"epoch": range(1, epochs_run + 1), "train_loss": [2.0 - 0.3 * e for e in range(epochs_run)],
                      "test_top1": [top1 - 10 * (epochs_run - e) for e in range(1, epochs_run + 1)]}
                     ).to_csv(folder / "history.csv", index=False)
        genotype = {"relu": RELU, "swish": SWISH, "darts-simple": SEARCHED}.get(
            activation, Genotype("simple", ("scale", "zero", "left"), (1000.0, None, None)))
        genotype.save(folder / "genotype.json")
    # Two search seeds; the select stage retrains seed 1's (seed 0's scored higher but the depth check flagged it).
    found = {0: {"formula": "sqrt(x)", "equivalence": None, "supernet_val_top1": 63.0, "discretized_val_top1": 60.0,
                 "depth_check": "flagged: x400 on resnet20", "depth_flagged": True},
             1: {"formula": SEARCHED.formula(), "equivalence": None, "supernet_val_top1": 61.5,
                 "discretized_val_top1": 58.0, "discretization_gap_top1": 3.5, "depth_check": "ok: x15",
                 "depth_flagged": False}}
    selected = root / "select" / "darts-simple"
    write_json(selected / "selection.json", selection_record("darts", "simple", found))
    write_json(selected / "discretize.json", found[1] | {"search_seed": 1})
    SEARCHED.save(selected / "genotype.json")
    history = [{"epoch": e, "val_top1": 40.0 + e,
                "operator_weights": {"u1": {"identity": 0.3 + 0.1 * e, "tanh": 0.7 - 0.1 * e},
                                     "u2": {"identity": 0.5, "tanh": 0.5},
                                     "b1": {"add": 0.6 - 0.1 * e, "mul": 0.4 + 0.1 * e}},
                "entropy": {"u1": 0.9, "u2": 1.0, "b1": 0.95 - 0.1 * e}} for e in (1, 2)]
    write_json(root / "search" / "darts-simple-s1" / "history.json", history)
    write_json(root / "search" / "darts-simple-s1" / "summary.json", {"skipped_steps": 3, "steps": 480})
    return root


def test_one_row_per_activation_with_mean_std_and_seed_counts(results):
    runs = read_runs(results, list(ORIGINS), NETWORKS, SEEDS)
    table = results_table(runs, ORIGINS, NETWORKS, {"darts-simple": {"supernet_val_top1": 61.5,
                                                                     "discretization_gap_top1": 3.5}})
    assert set(table["activation"]) == set(ORIGINS)
    relu = table.set_index("activation").loc["relu"]
    assert relu["resnet8_top1_mean"] == pytest.approx(81.0)
    assert relu["resnet8_top1_std"] == pytest.approx(math.sqrt(2.0))  # sample std of 80, 82
    assert relu["resnet8_top5_mean"] == pytest.approx(98.5)
    assert relu["resnet8_time_rel_relu"] == pytest.approx(1.0)
    assert (relu["resnet8_seeds_ok"], relu["resnet8_seeds"], relu["resnet8_status"]) == (2, 2, "ok")
    searched = table.set_index("activation").loc["darts-simple"]
    assert searched["origin"] == "darts + simple" and searched["formula"] == SEARCHED.formula()
    assert searched["resnet8_time_rel_relu"] == pytest.approx(2.0)  # 22 s vs ReLU's mean 11 s
    assert (searched["supernet_val_top1"], searched["discretization_gap"]) == (61.5, 3.5)


def test_rows_rank_by_the_deepest_network_and_failures_rank_last(results):
    table = results_table(read_runs(results, list(ORIGINS), NETWORKS, SEEDS), ORIGINS, NETWORKS, {})
    # resnet20 means: relu 90.5, darts-simple 88.5; swish (one failed_to_learn) and boom (diverged) after them
    assert list(table["activation"]) == ["relu", "darts-simple", "swish", "boom"]
    assert list(table["rank"]) == [1, 2, 3, 4]
    rows = table.set_index("activation")
    assert (rows.loc["swish", "failures"], rows.loc["boom", "failures"]) == (1, 4)
    # resnet8 has no failure of swish: ranked by mean there, 82.0 > relu's 81.0 > darts-simple's 79.0
    assert [rows.loc[a, "rank_resnet8"] for a in ("swish", "relu", "darts-simple", "boom")] == [1, 2, 3, 4]
    transfer = transfer_table(table, NETWORKS, "resnet8").set_index("activation")
    assert transfer.loc["swish", "move"] == 1 - 3 and transfer.loc["relu", "move"] == 2 - 1


def test_failed_seeds_are_left_out_of_the_numbers_and_named(results):
    table = results_table(read_runs(results, list(ORIGINS), NETWORKS, SEEDS), ORIGINS, NETWORKS, {})
    swish = table.set_index("activation").loc["swish"]
    assert swish["resnet20_top1_mean"] == pytest.approx(90.5) and math.isnan(swish["resnet20_top1_std"])
    assert (swish["resnet20_seeds_ok"], swish["resnet20_status"]) == (1, "failed_to_learn 1/2")
    assert swish["resnet20_verdict_vs_relu"] == "failed 1/2"
    boom = table.set_index("activation").loc["boom"]
    assert math.isnan(boom["resnet8_top1_mean"]) and boom["resnet8_status"] == "diverged 2/2"
    assert math.isnan(boom["resnet8_time_rel_relu"])  # a diverged run's partial epoch says nothing about speed


def test_markdown_shows_status_failures_and_verdicts(results):
    table = results_table(read_runs(results, list(ORIGINS), NETWORKS, SEEDS), ORIGINS, NETWORKS, {})
    selections = {"darts-simple": json.loads((results / "select" / "darts-simple" / "selection.json").read_text())}
    markdown = results_markdown(table, NETWORKS, transfer_table(table, NETWORKS, "resnet8"),
                                search_summary(table, NETWORKS, selections), selections)
    lines = {line.split(" | ")[1]: line for line in markdown.splitlines() if line.startswith("| ") and " | " in line
             and line.split(" | ")[0].strip("| ").isdigit()}
    assert lines["relu"].startswith("| 1 | relu | baseline |") and "81.00 ± 1.41 (n=2)" in lines["relu"]
    assert "90.50 (n=1; failed_to_learn 1/2)" in lines["swish"] and "| 1/4 | failed 1/2 |" in lines["swish"]
    assert lines["boom"].count("diverged 2/2") == 2 and "n=" not in lines["boom"] and "| 4/4 |" in lines["boom"]
    # darts-simple on resnet20: 88, 89 vs ReLU's 90, 91: diff -2, se sqrt(0.5), df 2 -> p = 0.11 even before Holm
    assert "`x*tanh(x)`" in lines["darts-simple"] and "79.00 ± 0.00 (n=2)" in lines["darts-simple"]
    assert "| no difference detected |" in lines["darts-simple"]
    # Per optimizer x space: 2 search seeds, 2 functions, 1 flagged, discretized top-1 58-60, seed 1's retrained.
    assert "## Rank transfer" in markdown
    assert "| darts | simple | 2 | 2 | 1 | 58.00-60.00 | darts-simple | 0/1 | -2.00 |" in markdown  # seed: below
    seeds = markdown[markdown.index("## Search seeds"):].splitlines()
    assert "| darts-simple | 0 | `sqrt(x)` | 60.00 | 63.00 | flagged: x400 on resnet20 |  |" in seeds
    assert f"| darts-simple | 1 | `{SEARCHED.formula()}` | 58.00 | 61.50 | ok: x15 | yes |" in seeds


def test_write_report_writes_table_metric_and_figures(results, tmp_path):
    reports = tmp_path / "reports"
    summary = write_report(results, reports, ORIGINS, NETWORKS, SEEDS, "resnet8")
    table = pd.read_csv(reports / "results.csv")
    assert list(table["activation"]) == ["relu", "darts-simple", "swish", "boom"]
    assert json.loads((reports / "summary.json").read_text()) == summary
    assert summary["network"] == "resnet20"
    assert summary["activations"]["relu"] == {"top1": pytest.approx(90.5), "vs_relu": None, "p_vs_relu": None,
                                              "verdict": "reference", "failures": 0, "seeds": 4, "rank": 1}
    assert summary["activations"]["boom"] == {"top1": None, "vs_relu": None, "p_vs_relu": None,
                                              "verdict": "failed 2/2", "failures": 4, "seeds": 4, "rank": 4}
    assert summary["searches"] == {"darts-simple": {"search_seeds": 2, "distinct_functions": 2, "depth_flagged": 1,
                                                    "within_1_point_of_relu": 0}}
    assert table.set_index("activation").loc["darts-simple", "origin"] == "darts + simple, search seed 1"
    # The search's skipped steps reach the metric, results.csv and results.md (issue 24: they were never shown).
    assert summary["activations"]["darts-simple"]["skipped_steps"] == 3
    assert "skipped_steps" not in summary["activations"]["relu"]
    searched = table.set_index("activation").loc["darts-simple"]
    assert (searched["search_skipped_steps"], searched["search_steps"]) == (3, 480)
    markdown = (reports / "results.md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| rank |")).split(" | ")
    row = next(line for line in markdown.splitlines() if line.startswith("| 2 | darts-simple |")).split(" | ")
    relu = next(line for line in markdown.splitlines() if line.startswith("| 1 | relu |")).split(" | ")
    column = header.index("skipped search steps")
    assert (row[column], relu[column]) == ("3/480", "n/a")
    assert "| darts | simple | 2 | 2 | 1 | 58.00-60.00 | darts-simple (s1) | 0/1 | -2.00 |" in markdown
    # Tidy curves for DVC's x/y plots: one file per line, mean over the seeds that trained normally.
    curves = reports / "curves"
    relu = pd.read_csv(curves / "test_top1" / "resnet20" / "relu.csv")
    assert list(relu.columns) == ["epoch", "test_top1"] and list(relu["epoch"]) == list(range(1, EPOCHS + 1))
    assert relu["test_top1"].iloc[-1] == pytest.approx(summary["activations"]["relu"]["top1"])
    ok_relu = [top1 for (a, n, _), (status, top1, _, _) in RUNS.items() if (a, n, status) == ("relu", "resnet20", "ok")]
    assert relu["test_top1"].iloc[0] == pytest.approx(sum(ok_relu) / len(ok_relu) - 10 * (EPOCHS - 1))
    loss = pd.read_csv(curves / "train_loss" / "resnet8" / "darts-simple.csv")
    assert list(loss["train_loss"]) == pytest.approx([2.0 - 0.3 * e for e in range(EPOCHS)])
    assert not (curves / "test_top1" / "resnet20" / "boom.csv").exists()  # diverged on every seed: no curve
    search = pd.read_csv(curves / "search_val_top1" / "darts-simple.csv")
    assert list(search["epoch"]) == [1, 2] and list(search["val_top1"]) == [41.0, 42.0]
    assert "the searched activation" in table.set_index("activation").loc["boom", "equivalence"]  # 1000*x: affine
    figures = reports / "figures"
    expected = ["activations.png", "search_vs_retrained.png", "rank_transfer.png", "search_val_top1.png",
                "training_test_top1_resnet8.png", "training_train_loss_resnet20.png",
                "search/darts-simple_weights_u1.png", "search/darts-simple_weights_b1.png",
                "search/darts-simple_entropy.png"]
    for name in expected:
        assert (figures / name).stat().st_size > 1000, name


def test_the_report_writes_its_figures_in_the_chosen_format(results, tmp_path):
    reports = tmp_path / "reports"
    write_report(results, reports, ORIGINS, NETWORKS, SEEDS, "resnet8", figure_format="svg")
    written = sorted(path.relative_to(reports / "figures").as_posix() for path in (reports / "figures").rglob("*.*"))
    assert {name.rpartition(".")[2] for name in written} == {"svg"}
    assert {"activations.svg", "rank_transfer.svg", "search/darts-simple_entropy.svg"} <= set(written)


def test_a_missing_run_is_a_clear_error(results):
    (results / "evaluate" / "relu" / "resnet8" / "seed1" / "metrics.json").unlink()
    with pytest.raises(ReportError, match=r"relu/resnet8/seed1/metrics.json is missing"):
        read_runs(results, list(ORIGINS), NETWORKS, SEEDS)


def test_run_records_join_their_runs_and_missing_ones_are_a_warning(results, caplog):  # noqa: F811
    """The fixture writes no run records (outputs pulled from a DVC remote come without): the report warns once."""
    from pipeline.analysis.layout import run_record_path
    activation = list(ORIGINS)[0]
    record = run_record_path(results, activation, NETWORKS[0], SEEDS[0])
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"steady_epoch_time_s": 12.5, "model_uri": "models:/m-1"}))
    with caplog.at_level(logging.WARNING, logger="pipeline.analysis.report"):
        runs = read_runs(results, list(ORIGINS), NETWORKS, SEEDS)
    first = next(r for r in runs if r["activation"] == activation and r["network"] == NETWORKS[0]
                 and r["seed"] == SEEDS[0])
    assert (first["steady_epoch_time_s"], first["model_uri"]) == (12.5, "models:/m-1")
    total = len(ORIGINS) * len(NETWORKS) * len(SEEDS)
    assert f"{total - 1} of {total} retrainings have no run record" in caplog.text
