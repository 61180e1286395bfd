"""cluster.yaml: the Ray runner's settings, outside params.yaml; mistakes are one line naming the file."""
from pathlib import Path

import pytest
import yaml

from pipeline.study.cluster_settings import ClusterError, load_cluster_settings
from pipeline.study.config import ParamsError, parse_params

ROOT = Path(__file__).resolve().parents[1]


def test_the_committed_settings_load_and_hold_every_stage_kind():
    settings = load_cluster_settings(ROOT / "cluster.yaml")
    assert settings.evaluate.num_gpus == 0.25 and settings.search.num_cpus == 2 and settings.max_retries == 2
    dvc_kinds = {name.split("-")[0] for name in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]}
    assert dvc_kinds <= set(settings.model_dump())  # every stage kind dvc.yaml has gets resources


@pytest.mark.parametrize("text, message", [
    (None, "no such file"),
    ("max_retries: [", "is not valid YAML"),
    ("max_retries: -1", "max_retries: Input should be greater than or equal to 0"),
])
def test_a_broken_settings_file_is_one_line_naming_it(tmp_path, text, message):
    path = tmp_path / "cluster.yaml"
    if text is not None:
        base = yaml.safe_load((ROOT / "cluster.yaml").read_text())
        path.write_text(text if "[" in text else yaml.safe_dump(base | yaml.safe_load(text)))
    with pytest.raises(ClusterError) as error:
        load_cluster_settings(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)
    assert "\n" not in str(error.value)


def test_params_with_the_old_cluster_section_are_told_where_it_went():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["cluster"] = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    with pytest.raises(ParamsError, match=r"params.yaml: cluster was removed \(.*cluster.yaml"):
        parse_params(raw, ROOT, check_paths=False)

