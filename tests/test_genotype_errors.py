"""A broken genotype is refused with one clear line: unknown keys and edges, a beta on an operator without one,
a beta that is no finite number; a broken searched genotype ends the evaluate stage with one line naming the stage
that rewrites it, not a traceback (issue 24, item 4)."""
import json

import pytest
import torch

import stages.evaluate as evaluate
from pipeline.space.genotype import Genotype, GenotypeError
from stages.common import run

GOOD = {"space": "simple", "ops": {"u1": "scale", "u2": "tanh", "b1": "mul"}, "betas": {"u1": 2.0}}


def test_the_good_genotype_loads():  # the base every broken variant below departs from
    assert Genotype.from_dict(GOOD) == Genotype("simple", ("scale", "tanh", "mul"), (2.0, None, None))


@pytest.mark.parametrize("change, message", [
    ({"formula": "2*x*tanh(x)"}, r"unknown genotype keys \['formula'\]; a genotype holds only"),
    ({"ops": {**GOOD["ops"], "u3": "relu"}}, r"'ops' names edges \['u3'\] that a simple genotype does not have"),
    ({"betas": {"u1": 2.0, "b2": 1.0}}, r"'betas' names edges \['b2'\] that a simple genotype does not have"),
    ({"betas": {"u1": 2.0, "u2": 0.5}}, r"edge u2: operator 'tanh' takes no beta, got 0.5; remove the beta of u2"),
    ({"betas": {"u1": float("nan")}}, r"edge u1: the beta of 'scale' must be a finite number, got nan"),
    ({"betas": {"u1": "2"}}, r"edge u1: the beta of 'scale' must be a finite number, got '2'"),
    ({"ops": {"u1": ["scale"], "u2": "tanh", "b1": "mul"}}, r"edge u1 needs a unary operator, got \['scale'\]"),
    ({"ops": {"u1": "scale", "b1": "mul"}}, r"'ops' has no operator for the edges \['u2'\]"),
    ({"betas": [2.0]}, r"genotype 'betas' must map edges to values"),
    ({"space": "medium"}, r"unknown search space 'medium'"),
])
def test_a_broken_genotype_is_refused_not_ignored(change, message):
    with pytest.raises(GenotypeError, match=message):
        Genotype.from_dict({**GOOD, **change})


class StudyParams:
    """The one thing resolve_genotype asks of params.yaml: which activations the study evaluates."""

    def activations(self):
        return {"drnas-simple": "searched"}


def test_a_broken_searched_genotype_ends_the_stage_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(evaluate, "RESULTS", tmp_path)
    path = tmp_path / "select" / "drnas-simple" / "genotype.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({**GOOD, "betas": {"u1": 2.0, "b1": 1.0}}))  # mul takes no beta
    with pytest.raises(SystemExit) as exit_info:
        run(lambda argv: evaluate.resolve_genotype(StudyParams(), "searched", "drnas-simple"),
            *evaluate.STAGE_ERRORS)
    assert exit_info.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: cannot read genotype file {path}: edge b1: operator 'mul' takes no beta")
    assert line.endswith("rerun the select stage: dvc repro -f select")


def test_a_broken_genotype_in_the_searched_supernet_is_a_user_error(tmp_path, capsys):
    from pipeline.search.loop import load_selected_genotype

    path = tmp_path / "supernet.pt"
    torch.save({"config": {}, "state_dict": {}, "genotype": {**GOOD, "extra": 1}}, path)
    with pytest.raises(SystemExit) as exit_info:
        run(lambda argv: load_selected_genotype(path))  # the discretize stage's read, under its user errors
    assert exit_info.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: the genotype stored in the searched supernet {path} is broken (unknown genotype "
                           f"keys ['extra']") and line.endswith("rerun the search stage")
