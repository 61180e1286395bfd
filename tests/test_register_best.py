"""The aggregate stage registers the best searched activation's best seed, with its numbers and verdict as tags."""
import json

import stages.aggregate as aggregate


class Recorder:
    def __init__(self):
        self.calls = []

    def register_model(self, uri, name, tags):
        self.calls.append((uri, name, tags))
        return "1"


def write_run(results, activation, seed, top1, status="ok"):
    out = results / "evaluate" / activation / "resnet20" / f"seed{seed}"
    out.mkdir(parents=True)
    out.joinpath("metrics.json").write_text(json.dumps({
        "status": status, "test_top1": top1, "seed": seed, "formula": f"f_{activation}",
        "model_uri": f"models:/{activation}-{seed}"}))


def test_the_best_searched_activation_and_its_best_normal_seed_are_registered(tmp_path, monkeypatch):
    monkeypatch.setattr(aggregate, "RESULTS", tmp_path)
    origins = {"relu": "baseline", "darts-simple": "searched", "gdas-simple": "searched"}
    summary = {"relu": {"resnet20": {"top1_mean": 90.0}},  # a baseline is never registered
               "darts-simple": {"resnet20": {"top1_mean": 60.0}, "verdict": "worse than relu"},
               "gdas-simple": {"resnet20": {"top1_mean": 70.0}, "verdict": "no better than relu"}}
    write_run(tmp_path, "darts-simple", 0, 60.0)
    write_run(tmp_path, "gdas-simple", 0, 71.0)
    write_run(tmp_path, "gdas-simple", 1, 69.0)
    write_run(tmp_path, "gdas-simple", 2, 99.0, status="diverged")  # not a normal run
    run = Recorder()
    aggregate.register_best_searched(run, summary, origins, "resnet20", [0, 1, 2], "study-best-searched")
    [(uri, name, tags)] = run.calls
    assert (uri, name) == ("models:/gdas-simple-0", "study-best-searched")
    assert tags == {"activation": "gdas-simple", "formula": "f_gdas-simple", "network": "resnet20", "seed": 0,
                    "test_top1": 71.0, "top1_mean": 70.0, "verdict": "no better than relu"}


def test_nothing_is_registered_when_no_searched_activation_trained(tmp_path, monkeypatch):
    monkeypatch.setattr(aggregate, "RESULTS", tmp_path)
    run = Recorder()
    aggregate.register_best_searched(run, {"darts-simple": {"resnet20": {"top1_mean": None}}},
                                     {"darts-simple": "searched"}, "resnet20", [0], "x")
    assert run.calls == []
