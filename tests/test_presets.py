"""Presets are small overlays: applied to params.yaml they change their keys only, keep every comment, and refuse
a key params.yaml does not have before writing anything."""
import shutil
from pathlib import Path

import pytest

from pipeline.study.cli import main
from pipeline.study.config import ParamsError, load_params
from pipeline.study.params_yaml import load_yaml
from pipeline.study.presets import apply_preset, compose, load_preset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(ROOT / "presets", tmp_path / "presets")
    return tmp_path


def test_compose_merges_mappings_replaces_values_and_refuses_unknown_keys():
    base = {"search": {"epochs": 6, "op_set": "grafs", "drnas": {"kl": 1, "per_site": True}}, "data": {"seed": 0}}
    overlay = {"search": {"op_set": {"unary": ["relu"]}, "drnas": {"per_site": False}}}
    assert compose(base, overlay, "p.yaml") == {
        "search": {"epochs": 6, "op_set": {"unary": ["relu"]}, "drnas": {"kl": 1, "per_site": False}},
        "data": {"seed": 0}}
    with pytest.raises(ParamsError, match=r"^p.yaml: search.drnas.per_sit is not a key of params.yaml"):
        compose(base, {"search": {"drnas": {"per_sit": False}}}, "p.yaml")


def test_applying_a_preset_gives_its_study_and_keeps_the_comments_and_other_keys(project):
    params = project / "params.yaml"
    before = params.read_text()
    changed = apply_preset("ci", params)
    after = params.read_text()
    applied = load_params(params, check_paths=False)
    expected = load_preset("ci", ROOT / "params.yaml", check_paths=False)
    assert applied.model_dump() == expected.model_dump()
    assert "search.optimizers" in changed and "evaluate.networks" in changed and "search.grad_clip" not in changed
    # Every comment line of the default survives, and short lists stay inline as params.yaml writes them.
    assert [line for line in before.splitlines() if line.startswith("#")] == [
        line for line in after.splitlines() if line.startswith("#")]
    assert any(line.startswith("  optimizers: [darts, gdas] ") for line in after.splitlines())
    assert any(line.startswith("  beta_clamp: null ") for line in after.splitlines())  # null written as null
    assert "# darts | gdas | drnas: one search per optimizer, space and seed" in after  # the key's own comment
    assert apply_preset("ci", params) == []  # applying it again changes nothing


def test_a_wrong_preset_writes_nothing_and_names_itself(project):
    params = project / "params.yaml"
    before = params.read_text()
    (project / "presets" / "typo.yaml").write_text("search:\n  epochz: 3\n")
    with pytest.raises(ParamsError, match=r"^presets/typo.yaml: search.epochz is not a key of params.yaml"):
        apply_preset("typo", params)
    (project / "presets" / "bad.yaml").write_text("search:\n  epochs: 0\n")
    with pytest.raises(ParamsError, match=r"^presets/bad.yaml: search.epochs = 0 is invalid"):
        apply_preset("bad", params)
    with pytest.raises(ParamsError, match="no such preset .*presets: bad, ci, full, grafs, smoke, typo"):
        apply_preset("nothing", params)
    assert params.read_text() == before


def test_the_command_line_applies_and_checks_presets(project, monkeypatch, capsys):
    monkeypatch.chdir(project)
    assert main(["preset", "smoke", "--check"]) == 0
    assert capsys.readouterr().out.startswith("smoke is valid: ")
    assert main(["check", "presets/smoke.yaml"]) == 0  # a preset file is checked as applied to params.yaml
    assert main(["preset", "smoke"]) == 0
    assert "preset smoke set" in capsys.readouterr().out
    assert load_yaml((project / "params.yaml").read_text())["study"]["experiment"] == "actsearch-smoke"
