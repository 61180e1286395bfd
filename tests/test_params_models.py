"""params.yaml as pydantic models: one definition per key, shared by the study and the library; one-line errors."""
import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.search.search_config import SearchConfig, SearchSettings
from pipeline.study.config import SCHEMA_FILE, ParamsError, json_schema, parse_params
from pipeline.training.train_config import TrainConfig, TrainSettings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def error_of(raw: dict) -> str:
    with pytest.raises(ParamsError) as caught:
        parse_params(raw, ROOT, check_paths=False)
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_the_committed_json_schema_is_the_models_schema():
    # Stale after a params change: python -m pipeline.study.config --schema docs/params.schema.json
    assert (ROOT / SCHEMA_FILE).read_text() == json_schema()


def test_the_json_schema_knows_bounds_choices_and_nested_sections():
    schema = json.loads(json_schema())
    assert schema["additionalProperties"] is False
    evaluate = schema["$defs"]["EvaluateParams"]["properties"]
    assert evaluate["epochs"]["minimum"] == 1 and evaluate["schedule"]["enum"] == ["cosine", "multistep", "constant", "onecycle"]
    assert schema["$defs"]["SearchParams"]["properties"]["gdas"]["$ref"].endswith("GdasSettings")


def test_the_library_settings_are_the_params_sections():
    """Every key the search / training code reads is a key of params.yaml (one definition, no copy)."""
    params = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text()), ROOT, check_paths=False)
    assert set(SearchSettings.model_fields) <= set(type(params.search).model_fields)
    assert set(TrainSettings.model_fields) <= set(type(params.evaluate).model_fields)
    cfg = params.search.config("drnas", "complex", 0, "cpu")
    assert isinstance(cfg, SearchConfig) and cfg.lr == params.search.lr and cfg.drnas == params.search.drnas
    train = params.evaluate.train_config(seed=3, device="cpu")
    assert isinstance(train, TrainConfig) and train.seed == 3 and train.milestones == params.evaluate.milestones


def test_a_key_with_a_library_default_is_still_required(raw):
    del raw["evaluate"]["momentum"]  # TrainConfig has a default; params.yaml must still say it
    assert "evaluate.momentum is missing from evaluate" in error_of(raw)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    del raw["search"]["gdas"]["tau_min"]
    assert "search.gdas.tau_min is missing from search.gdas" in error_of(raw)


def test_a_misspelt_nested_key_gets_a_suggestion(raw):
    raw["search"]["gdas"]["tau_mx"] = 1.0
    message = error_of(raw)
    assert "unknown key search.gdas.tau_mx (did you mean search.gdas.tau_max?)" in message
    assert "['tau_max', 'tau_min']" in message


def test_types_are_strict_and_cross_field_rules_name_their_key(raw):
    changed = copy.deepcopy(raw)
    changed["evaluate"]["epochs"] = "3"
    assert "evaluate.epochs = '3' is invalid" in error_of(changed)
    changed = copy.deepcopy(raw)
    changed["evaluate"]["nesterov"], changed["evaluate"]["momentum"] = True, 0.0
    assert error_of(changed).startswith("params.yaml: evaluate.nesterov = True is invalid; allowed: false")
    changed = copy.deepcopy(raw)
    changed["evaluate"]["seeds"] = [0, 0]
    assert "evaluate.seeds = [0, 0] is invalid; allowed: a list without repeated entries" in error_of(changed)
    changed = copy.deepcopy(raw)
    changed["search"] = "fast"
    assert "search = 'fast' is invalid; allowed: a mapping with keys" in error_of(changed)


def test_the_command_line_check_reports_one_line(tmp_path, raw):
    raw["search"]["epochz"] = 3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    done = subprocess.run([sys.executable, "-m", "pipeline.study.config", str(tmp_path / "params.yaml")], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "did you mean search.epochs" in done.stderr

