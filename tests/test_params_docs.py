"""The params are documented once, in the pydantic models: the schema and the table are generated from them and
agree with the loader (every key required) and with params.yaml; files are read as DVC reads them."""
import json
from pathlib import Path

import pytest
import yaml

from pipeline.study.config import SCHEMA_FILE, TABLE_FILE, ParamsError, json_schema, load_params, params_markdown
from pipeline.study.params_docs import describe_type, leaf_keys
from pipeline.study.params_yaml import load_yaml
from pipeline.study.presets import load_preset, preset_params

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "presets").glob("*.yaml"))


def schema() -> dict:
    return json.loads(json_schema())


def yaml_leaves(mapping: dict, prefix: str = "") -> set[str]:
    """Dotted keys of a params file down to the schema's leaves (cluster resources are one leaf each)."""
    keys = set()
    for name, value in mapping.items():
        if isinstance(value, dict) and name != "resources" and not (name == "op_set"):
            keys |= yaml_leaves(value, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def drop(raw: dict, dotted: str) -> dict:
    *path, last = dotted.split(".")
    node = raw
    for part in path:
        node = node[part]
    del node[last]
    return raw


def test_every_leaf_key_has_a_description():
    undocumented = [key for key, prop in leaf_keys(schema()) if not prop.get("description", "").strip()]
    assert undocumented == []


def test_the_committed_params_table_is_generated_from_the_models():
    # Stale after a params change: python -m pipeline.study.config --schema docs/params.schema.json --table docs/params.md
    assert (ROOT / TABLE_FILE).read_text() == params_markdown()


def test_the_table_has_a_row_for_every_key_of_params_yaml():
    table = (ROOT / TABLE_FILE).read_text()
    for key in yaml_leaves(yaml.safe_load((ROOT / "params.yaml").read_text())):
        assert f"| `{key}` |" in table, key


def test_the_schema_requires_what_the_loader_requires_and_claims_no_defaults():
    full = schema()
    for definition in [full, *full["$defs"].values()]:
        if "properties" in definition:
            assert sorted(definition["required"]) == sorted(definition["properties"])
            assert not [name for name, prop in definition["properties"].items() if "default" in prop]
    assert {key for key, _ in leaf_keys(full)} == yaml_leaves(yaml.safe_load((ROOT / "params.yaml").read_text()))


@pytest.mark.parametrize("key", [key for key, _ in leaf_keys(json.loads(json_schema()))])
def test_the_loader_refuses_params_yaml_without_each_required_key(key, tmp_path):
    raw = drop(yaml.safe_load((ROOT / "params.yaml").read_text()), key)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=rf"{key.replace('.', '[.]')} is missing"):
        load_params(tmp_path / "params.yaml", check_paths=False)


@pytest.mark.parametrize("path", [ROOT / "params.yaml", *PRESETS], ids=lambda path: path.name)
def test_params_yaml_and_the_presets_validate_against_the_committed_schema(path):
    jsonschema = pytest.importorskip("jsonschema")
    committed = json.loads((ROOT / SCHEMA_FILE).read_text())
    study = preset_params(path, ROOT / "params.yaml") if path.parent.name == "presets" else load_yaml(path.read_text())
    jsonschema.validate(study, committed)


def test_a_number_written_1e_3_is_a_number_as_dvc_reads_it(tmp_path):
    text = (ROOT / "params.yaml").read_text()
    lines = [line for line in text.splitlines() if line.strip().startswith("arch_lr:")]
    assert len(lines) == 1
    (tmp_path / "params.yaml").write_text(text.replace(lines[0], "  arch_lr: 1e-3"))
    assert load_params(tmp_path / "params.yaml", check_paths=False).search.arch_lr == 0.001
    (tmp_path / "params.yaml").write_text(text.replace(lines[0], "  arch_lr: 2.5E2"))
    assert load_params(tmp_path / "params.yaml", check_paths=False).search.arch_lr == 250.0


def test_an_error_names_the_file_it_is_about(tmp_path, monkeypatch):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["search"]["epochs"] = 0
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "mine.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParamsError) as caught:
        load_params("presets/mine.yaml", check_paths=False)
    assert str(caught.value).startswith("presets/mine.yaml: search.epochs = 0 is invalid")
    # A preset overlay's mistake names the preset, not the params.yaml it is applied to.
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (tmp_path / "presets" / "short.yaml").write_text("search:\n  epochs: 0\n")
    with pytest.raises(ParamsError) as caught:
        load_preset("short", tmp_path / "params.yaml", check_paths=False)
    assert str(caught.value).startswith("presets/short.yaml: search.epochs = 0 is invalid")


@pytest.mark.parametrize("prop, words", [
    ({"type": "integer", "minimum": 1}, "integer >= 1"),
    ({"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "null"}]}, "number > 0 or null"),
    ({"type": "integer", "minimum": 1, "maximum": 50000}, "integer >= 1, <= 50,000"),
    ({"enum": ["best", "last"], "type": "string"}, "`best` | `last`"),
    ({"type": "array", "items": {"enum": [0, 1]}, "minItems": 1}, "list of (`0` | `1`), at least 1"),
    ({"type": "string", "minLength": 1}, "non-empty string"),
    ({"type": "array", "prefixItems": [{"type": "number"}, {"type": "number"}]}, "[number, number]"),
])
def test_types_are_described_in_words(prop, words):
    assert describe_type(prop) == words
