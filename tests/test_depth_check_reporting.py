"""Where the depth check shows: the discretize stage runs it on evaluate.networks plus the extra ones, on the
prepared images, with evaluate's SGD settings; the evaluate stage warns about a flagged function (and retrains it);
the results table and results.md carry its one-line verdict beside the formula."""
import json
import logging
from pathlib import Path

import pytest
import torch

from pipeline.analysis.markdown import results_markdown
from pipeline.analysis.report import read_runs
from pipeline.analysis.table import results_table, search_summary, transfer_table
from pipeline.space.genotype import BASELINES
from pipeline.study.config import load_params
from pipeline.study.presets import load_preset
from stages import discretize, evaluate
from tests.test_report import NETWORKS, ORIGINS, SEEDS, results  # noqa: F401 - `results` is a fixture

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def prepared(count: int = 96) -> dict:
    """CIFAR-like prepared data, sorted by class as an image tree gives it."""
    generator = torch.Generator().manual_seed(0)
    return {"train_images": torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator),
            "train_labels": torch.arange(count) * 10 // count}


def test_the_discretize_stage_checks_every_evaluation_network_with_evaluates_sgd_settings(monkeypatch):
    params = load_preset("ci", ROOT / "params.yaml", check_paths=False)
    params.discretize.depth_check = params.discretize.depth_check.model_copy(
        update={"extra_networks": ["resnet20", "resnet8"], "batch_size": 16, "sgd_steps": 4})
    params.evaluate = params.evaluate.model_copy(update={"batch_size": 32, "divergence_loss": 1e-3})
    monkeypatch.setattr(discretize, "load_prepared", prepared)
    check = discretize.run_depth_check(params, BASELINES["relu"], 0, torch.device("cpu"))
    assert list(check["networks"]) == ["resnet8", "resnet20"]  # evaluate.networks (resnet8) + extra, shallow first
    # evaluate.divergence_loss is the retraining's rule: every run stops at its first step here.
    assert all(r["sgd"]["diverged_step"] == 1 for r in check["networks"].values()) and check["flagged"]
    relaxed = params.evaluate.model_copy(update={"divergence_loss": 1e3})
    params.evaluate = relaxed
    again = discretize.run_depth_check(params, BASELINES["relu"], 0, torch.device("cpu"))
    assert [len(r["sgd"]["losses"]) for r in again["networks"].values()] == [4, 4]  # 4 steps of 32 from 96 images
    assert again["networks"]["resnet8"]["grad_norms"] == check["networks"]["resnet8"]["grad_norms"]


def test_evaluate_warns_about_a_flagged_function_and_tags_its_verdict(tmp_path, caplog):
    path = tmp_path / "discretize.json"
    path.write_text(json.dumps({"depth_check": "flagged (x1.4e+04 grad spread on resnet56)", "depth_flagged": True}))
    with caplog.at_level(logging.WARNING, logger="stages"):
        assert evaluate.depth_warning("drnas-simple-s0", path) == "flagged (x1.4e+04 grad spread on resnet56)"
    assert "drnas-simple-s0" in caplog.text and "retraining it all the same" in caplog.text
    caplog.clear()
    path.write_text(json.dumps({"depth_check": "ok (x12 grad spread on resnet56)", "depth_flagged": False}))
    with caplog.at_level(logging.WARNING, logger="stages"):
        assert evaluate.depth_warning("drnas-simple-s0", path) == "ok (x12 grad spread on resnet56)"
    assert not caplog.text
    assert evaluate.depth_warning("drnas-simple-s0", tmp_path / "missing.json") is None  # an older discretize output


def test_the_results_table_shows_the_verdict_beside_the_formula(results):  # noqa: F811 - the fixture
    runs = read_runs(results, list(ORIGINS), NETWORKS, SEEDS)
    verdict_text = "flagged (x1.4e+04 grad spread on resnet56)"
    table = results_table(runs, ORIGINS, NETWORKS, {"darts-simple": {"depth_check": verdict_text}})
    rows = table.set_index("activation")
    assert rows.loc["darts-simple", "depth_check"] == verdict_text
    assert rows.loc["relu", "depth_check"] == ""  # baselines are the references: not checked
    markdown = results_markdown(table, NETWORKS, transfer_table(table, NETWORKS, "resnet8"),
                                search_summary(table, NETWORKS))
    header = next(line for line in markdown.splitlines() if line.startswith("| rank"))
    row = next(line for line in markdown.splitlines() if "| darts-simple |" in line)
    assert header.rstrip(" |").endswith("depth at init") and row.rstrip(" |").endswith(verdict_text)


def test_the_bench_measures_every_good_and_bad_function_on_real_images(tmp_path, capsys):
    from bench import depth_check as bench
    from tests.test_data import make_tree

    make_tree(tmp_path / "src", n_train=6, n_test=3)
    out = tmp_path / "depth.json"
    results = bench.main(["--source", str(tmp_path / "src"), "--cache-dir", str(tmp_path / "cache"), "--networks",
                          "resnet8", "--batch", "8", "--sgd-steps", "2", "--sgd-batch", "8", "--json", str(out)])
    assert {"relu", "swish", "gelu", "cube", "exp", "relu/sqrt_ramp mix"} <= set(results)
    assert all(len(check["networks"]["resnet8"]["sgd"]["losses"]) == 2 for check in results.values())
    printed = capsys.readouterr().out
    assert "| relu | resnet8 |" in printed and f"| exp | {results['exp']['summary']} |" in printed
    assert json.loads(out.read_text())["relu"]["summary"] == results["relu"]["summary"]


@pytest.mark.parametrize("train_betas, bound", [(True, 2.5), (False, None)])
def test_the_checked_network_gets_evaluates_beta_rule(monkeypatch, train_betas, bound):
    """Betas as the evaluate stage retrains them: frozen, or trained within the search's bound."""
    from pipeline.space.genotype import Genotype

    params = load_preset("ci", ROOT / "params.yaml", check_paths=False)
    params.discretize.depth_check = params.discretize.depth_check.model_copy(update={"batch_size": 8, "sgd_steps": 1})
    params.evaluate = params.evaluate.model_copy(update={"batch_size": 8, "train_betas": train_betas})
    params.search = params.search.model_copy(update={"beta_clamp": 2.5})
    seen, factory = [], Genotype.factory
    monkeypatch.setattr(Genotype, "factory", lambda self, *args: seen.append(args) or factory(self, *args))
    monkeypatch.setattr(discretize, "load_prepared", prepared)
    discretize.run_depth_check(params, BASELINES["swish"], 0, torch.device("cpu"))
    assert seen == [(params.evaluate.beta_mode, train_betas, None, params.evaluate.betas, bound)]
