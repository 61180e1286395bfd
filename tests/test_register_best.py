"""The aggregate stage registers the best searched activation's best seed, with its numbers and verdict as tags,
from the summary write_report returns; a registration that cannot happen fails loudly (issue 24, item 3)."""
import json
import logging

import pytest

import stages.aggregate as aggregate
from pipeline.analysis.layout import run_record_path
from pipeline.analysis.report import write_report
from tests.test_report import NETWORKS, ORIGINS, SEEDS, results  # noqa: F401 (results: the fixture)


class Recorder:
    enabled = True  # MLflow on, as StageRun.enabled

    def __init__(self):
        self.calls = []

    def register_model(self, uri, name, tags):
        self.calls.append((uri, name, tags))
        return "1"


def write_run(results, activation, seed, top1, status="ok", network="resnet20"):
    out = results / "evaluate" / activation / network / f"seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    out.joinpath("metrics.json").write_text(json.dumps({
        "status": status, "test_top1": top1, "seed": seed, "formula": f"f_{activation}"}))
    record = run_record_path(results, activation, network, seed)  # the URI lives outside the DVC outputs
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"model_uri": f"models:/{activation}-{seed}"}))


def summary_of(top1: dict) -> dict:
    """write_report's summary shape: the ranking network and per activation its headline numbers."""
    return {"network": "resnet20", "searches": {},
            "activations": {name: {"top1": value, "verdict": f"verdict of {name}"} for name, value in top1.items()}}


def test_the_report_summary_registers_its_best_searched_activation(results, tmp_path, monkeypatch):  # noqa: F811
    """The summary exactly as write_report returns it (the stage handed the whole of it to a function that looked
    for activations at its top level, so nothing was ever registered)."""
    summary = write_report(results, tmp_path / "reports", ORIGINS, NETWORKS, SEEDS, "resnet8")
    for seed, top1 in zip(SEEDS, (88.0, 89.0)):  # the fixture's darts-simple runs on resnet20, with logged models
        write_run(results, "darts-simple", seed, top1)
    monkeypatch.setattr(aggregate, "RESULTS", results)
    run = Recorder()
    assert aggregate.register_best_searched(run, summary, ORIGINS, SEEDS, "study-best-searched") == "1"
    [(uri, name, tags)] = run.calls
    assert (uri, name) == ("models:/darts-simple-1", "study-best-searched")
    assert tags == {"activation": "darts-simple", "formula": "f_darts-simple", "network": "resnet20", "seed": 1,
                    "test_top1": 89.0, "top1_mean": 88.5,
                    "verdict": summary["activations"]["darts-simple"]["verdict"]}


def test_the_best_searched_activation_and_its_best_normal_seed_are_registered(tmp_path, monkeypatch):
    monkeypatch.setattr(aggregate, "RESULTS", tmp_path)
    origins = {"relu": "baseline", "darts-simple": "searched", "gdas-simple": "searched"}
    summary = summary_of({"relu": 90.0, "darts-simple": 60.0, "gdas-simple": 70.0})  # a baseline is never registered
    write_run(tmp_path, "darts-simple", 0, 60.0)
    write_run(tmp_path, "gdas-simple", 0, 71.0)
    write_run(tmp_path, "gdas-simple", 1, 69.0)
    write_run(tmp_path, "gdas-simple", 2, 99.0, status="diverged")  # not a normal run
    run = Recorder()
    aggregate.register_best_searched(run, summary, origins, [0, 1, 2], "study-best-searched")
    [(uri, name, tags)] = run.calls
    assert (uri, name) == ("models:/gdas-simple-0", "study-best-searched")
    assert tags == {"activation": "gdas-simple", "formula": "f_gdas-simple", "network": "resnet20", "seed": 0,
                    "test_top1": 71.0, "top1_mean": 70.0, "verdict": "verdict of gdas-simple"}


def test_nothing_is_registered_when_no_searched_activation_trained_and_it_says_so(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(aggregate, "RESULTS", tmp_path)
    run = Recorder()
    with caplog.at_level(logging.WARNING, logger="stages"):
        assert aggregate.register_best_searched(run, summary_of({"darts-simple": None}), {"darts-simple": "searched"},
                                                [0], "x") is None
    assert run.calls == [] and "no searched activation trained normally on resnet20" in caplog.text


def test_a_summary_without_the_searched_rows_fails_loudly(tmp_path, monkeypatch):
    monkeypatch.setattr(aggregate, "RESULTS", tmp_path)
    summary = {"network": "resnet20", "activations": {"relu": {"top1": 90.0, "verdict": "reference"}}}
    with pytest.raises(aggregate.RegistrationError, match=r"no row for the searched activations \['darts-simple'\]"):
        aggregate.register_best_searched(Recorder(), summary, {"relu": "baseline", "darts-simple": "searched"}, [0],
                                         "x")


def test_a_best_activation_without_a_logged_model_fails_loudly(tmp_path, monkeypatch):
    monkeypatch.setattr(aggregate, "RESULTS", tmp_path)
    write_run(tmp_path, "darts-simple", 0, 60.0)
    run_record_path(tmp_path, "darts-simple", "resnet20", 0).write_text(json.dumps({"model_uri": None}))
    with pytest.raises(aggregate.RegistrationError, match="darts-simple ranks best.*no.*logged model"):
        aggregate.register_best_searched(Recorder(), summary_of({"darts-simple": 60.0}), {"darts-simple": "searched"},
                                         [0], "x")


def test_with_mlflow_off_nothing_is_registered(tmp_path, monkeypatch):
    monkeypatch.setattr(aggregate, "RESULTS", tmp_path)
    run = Recorder()
    run.enabled = False
    assert aggregate.register_best_searched(run, summary_of({"darts-simple": 60.0}), {"darts-simple": "searched"},
                                            [0], "x") is None
    assert run.calls == []
