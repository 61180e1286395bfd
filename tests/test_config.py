"""params.yaml -> typed parameters: defaults and presets load; every kind of mistake is one clear line."""
import ast
import copy
import re
from pathlib import Path

import pytest
import yaml

from pipeline.study.config import (ParamsError, load_params, parse_params, parse_searched, parse_selected,
                                   search_stage_suffix)
from pipeline.space.genotype import RELU
from pipeline.study.params_yaml import load_yaml
from pipeline.study.presets import load_preset
from pydantic import BaseModel

from pipeline.study.config import Params

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "presets").glob("*.yaml"))


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.fixture
def project(tmp_path, raw) -> tuple[Path, dict]:
    """A project root in tmp_path with a tiny stand-in data archive, and params pointing at it."""
    (tmp_path / "cifar.tar.gz").write_bytes(b"not read by the config check")
    raw = copy.deepcopy(raw)
    raw["data"]["source"] = "cifar.tar.gz"
    return tmp_path, raw


def error_of(raw: dict, root: Path = ROOT, check_paths: bool = False) -> str:
    with pytest.raises(ParamsError) as caught:
        parse_params(raw, root, check_paths=check_paths)
    message = str(caught.value)
    assert "\n" not in message, f"the error must be one line: {message!r}"
    return message


def test_the_committed_defaults_load_and_describe_the_whole_study():
    params = load_params(ROOT / "params.yaml", check_paths=False)
    assert params.search.optimizers == ["darts", "gdas", "drnas"]  # the poster's comparison
    assert set(params.search.spaces) == {"simple", "complex"} and len(params.search.seeds) >= 2
    assert set(params.evaluate.networks) == {"resnet8", "resnet20"}
    assert set(params.evaluate.baselines) == {"relu", "swish"} and len(params.evaluate.seeds) >= 3
    # One retrained function per optimizer x space (the select stage's choice among the search seeds).
    assert list(params.activations()) == ["relu", "swish", "darts-simple", "darts-complex", "gdas-simple",
                                          "gdas-complex", "drnas-simple", "drnas-complex"]
    assert params.search.names()[:2] == ["darts-simple-s0", "darts-simple-s1"]
    assert not (ROOT / "presets" / "optimizers.yaml").exists()  # the default is that study now


def _key_tree(node) -> dict:
    return {key: _key_tree(value) for key, value in node.items()} if isinstance(node, dict) else None


def _get(tree: dict, dotted: str):
    for key in dotted.split("."):
        tree = tree[key]
    return tree


def _key_paths(tree: dict, prefix: str = "") -> set[str]:
    """Every key of a params tree as a dotted path (the op_set's own {unary, binary} mapping is a value)."""
    paths = set()
    for key, value in tree.items():
        path = f"{prefix}{key}"
        paths.add(path)
        if isinstance(value, dict) and path != "search.op_set":
            paths |= _key_paths(value, path + ".")
    return paths


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_preset_is_a_small_overlay_that_gives_a_valid_study(preset):
    params = load_preset(preset, ROOT / "params.yaml", check_paths=False)  # ParamsError on a bad value
    assert params.search.optimizers and params.evaluate.networks
    committed = _key_paths(yaml.safe_load((ROOT / "params.yaml").read_text()))
    overlay = _key_paths(yaml.safe_load(Path(preset).read_text()))
    assert overlay < committed, "a preset holds only params.yaml keys, and not all of them"
    base, mine = load_yaml((ROOT / "params.yaml").read_text()), load_yaml(Path(preset).read_text())
    unchanged = [key for key in overlay if _get(base, key) == _get(mine, key)]
    assert not unchanged, f"keys a preset sets to the default's value: {unchanged}"
    # one retrained searched function per optimizer x space (the select stage's choice among the search seeds)
    assert len(params.activations()) == (len(params.evaluate.baselines) + len(params.evaluate.custom)
                                         + len(params.search.optimizers) * len(params.search.spaces))


def test_presets_smoke_ci_and_full():
    assert {p.stem for p in PRESETS} >= {"ci", "full", "smoke"}
    ci = load_preset("ci", ROOT / "params.yaml", check_paths=False)
    assert ci.search.seeds == [0, 1] and ci.search.spaces == ["simple"]  # fast, yet the select stage chooses
    full = load_preset("full", ROOT / "params.yaml", check_paths=False)
    assert len(full.search.seeds) == 3 and set(full.evaluate.networks) == {"resnet8", "resnet20", "resnet56"}
    assert (full.search.beta_init, full.search.beta_clamp) == ("grafs", 10.0)


def test_search_seeds_name_the_searched_activations_and_their_stages(raw):
    raw["search"]["optimizers"], raw["search"]["spaces"], raw["search"]["seeds"] = ["drnas"], ["complex"], [1, 2]
    params = parse_params(raw, ROOT, check_paths=False)
    assert params.search.names() == ["drnas-complex-s1", "drnas-complex-s2"]
    assert parse_searched("drnas-complex-s2") == ("drnas", "complex", 2)
    assert search_stage_suffix("drnas", "complex", 2) == "drnas-complex-2"  # DVC joins the matrix values
    assert params.search.config("drnas", "complex", 2).seed == 2 and params.search_seed(1) == 1
    assert "search seed 3 is not in search.seeds = [1, 2]" in str(pytest.raises(ParamsError, params.search_seed, 3).value)
    with pytest.raises(ParamsError, match="not a searched activation name"):
        parse_searched("drnas-complex")
    assert params.search.selected_names() == ["drnas-complex"] and parse_selected("drnas-complex") == ("drnas",
                                                                                                        "complex")
    with pytest.raises(ParamsError, match="not a retrained searched activation name"):
        parse_selected("drnas-complex-s1")
    raw["search"]["seeds"] = [1, 1]
    assert "search.seeds" in error_of(raw) and "repeated" in error_of(raw)


def test_dvc_matrices_run_one_search_per_seed():
    stages = _stages()
    for name in ("search", "discretize"):
        assert "${search.seeds}" in stages[name]["matrix"].values(), name
    assert "results/search/${item.optimizer}-${item.space}-s${item.seed}" in stages["search"]["outs"]
    # One function per optimizer x space is retrained: the select stage's, whichever search seed found it.
    assert "${search.seeds}" not in stages["evaluate-searched"]["matrix"].values()
    assert "--activation ${item.optimizer}-${item.space} " in stages["evaluate-searched"]["cmd"]
    assert "results/select/${item.optimizer}-${item.space}/genotype.json" in stages["evaluate-searched"]["deps"]
    assert stages["select"]["outs"] == ["results/select"] and "results/discretize" in stages["select"]["deps"]


def test_shared_retraining_betas_are_scalars(raw):
    raw["evaluate"]["beta_mode"] = "channel"
    message = error_of(raw)
    assert "evaluate.beta_mode = 'channel'" in message and "evaluate.betas: per_site" in message
    raw["evaluate"]["betas"] = "per_site"
    assert parse_params(raw, ROOT, check_paths=False).evaluate.betas == "per_site"
    raw["evaluate"]["betas"] = "global"
    assert "evaluate.betas = 'global'" in error_of(raw)


def test_beta_options_of_the_search(raw):
    raw["search"]["beta_init"], raw["search"]["beta_clamp"] = "grafs", 10
    cfg = parse_params(raw, ROOT, check_paths=False).search.config("darts", "simple", 0)
    assert (cfg.beta_init, cfg.beta_clamp) == ("grafs", 10.0)
    raw["search"]["beta_clamp"] = 0
    assert "search.beta_clamp = 0" in error_of(raw)
    raw["search"]["beta_clamp"], raw["search"]["beta_init"] = None, "uniform"
    assert "search.beta_init = 'uniform'" in error_of(raw)


def test_the_full_preset_is_the_published_protocol():
    params = load_preset("full", ROOT / "params.yaml", check_paths=False)
    assert params.data.train_size is None and params.data.test_size is None
    assert params.search.epochs == 50 and len(params.evaluate.seeds) >= 3 and params.search.network == "resnet20"
    assert (params.data.search_train_size, params.data.search_val_size) == (37500, 12500)  # GRAFS: 75% / 25%
    train = params.evaluate.train_config(seed=0)  # He et al. (2016): 64k iterations of 128, lr / 10 at 32k and 48k
    assert (train.epochs, train.lr, train.momentum, train.weight_decay, train.schedule, train.milestones,
            train.batch_size) == (164, 0.1, 0.9, 1e-4, "multistep", [82, 123], 128)


def test_search_config_takes_each_optimizers_own_section(raw):
    raw["search"]["gdas"] = {"tau_max": 5.0, "tau_min": 0.5}
    raw["search"]["darts"] = {"second_order": True}
    params = parse_params(raw, ROOT, check_paths=False)
    gdas = params.search.config("gdas", "complex", 0, "cpu")
    assert (gdas.optimizer, gdas.space, gdas.gdas.tau_max, gdas.gdas.tau_min, gdas.device) == ("gdas", "complex", 5.0,
                                                                                               0.5, "cpu")
    assert gdas.darts.second_order is False  # second order belongs to DARTS alone
    assert params.search.config("darts", "simple", 0).darts.second_order is True
    assert params.search.config("darts", "simple", 0).gdas.tau_max == 10.0  # a search sees only its own section
    assert params.search.config("drnas", "simple", 0).drnas.regularizer == raw["search"]["drnas"]["regularizer"]


def test_unknown_key_names_it_suggests_the_fix_and_lists_the_allowed_keys(raw):
    raw["search"]["epochz"] = 3
    message = error_of(raw)
    assert "search.epochz" in message and "did you mean search.epochs" in message and "'epochs'" in message


def test_a_retired_key_says_what_became_of_it(raw):
    raw["search"]["compile_min_steps"] = 200  # params files from before the one-kernel search
    message = error_of(raw)
    assert message.startswith("params.yaml: search.compile_min_steps was removed") and "delete it from" in message


def test_unknown_section_is_rejected(raw):
    raw["serach"] = {}
    message = error_of(raw)
    assert "serach" in message and "did you mean search" in message


def test_missing_key_is_named(raw):
    del raw["evaluate"]["lr"]
    assert "evaluate.lr is missing" in error_of(raw)


def test_bad_optimizer_names_key_value_and_choices(raw):
    raw["search"]["optimizers"] = ["darts", "dart"]
    message = error_of(raw)
    assert "search.optimizers[1]" in message and "'dart'" in message
    assert "'darts', 'gdas' or 'drnas'" in message


def test_negative_epochs_names_key_value_and_range(raw):
    raw["evaluate"]["epochs"] = -3
    message = error_of(raw)
    assert "evaluate.epochs" in message and "-3" in message and "greater than or equal to 1" in message


def test_boolean_is_not_a_number(raw):
    raw["search"]["lr"] = True
    assert "search.lr = True" in error_of(raw)


def test_bad_operator_set_lists_the_allowed_operators(raw):
    raw["search"]["op_set"] = {"unary": ["relu", "sqaure"], "binary": ["add"]}
    message = error_of(raw)
    assert "search.op_set" in message and "sqaure" in message and "'square'" in message
    raw["search"]["op_set"] = "graf"
    message = error_of(raw)
    assert "'graf'" in message and "grafs" in message and "poster" in message


def test_missing_data_path_names_key_value_and_what_is_accepted(project):
    root, raw = project
    raw["data"]["source"] = "no/such/cifar.tar.gz"
    message = error_of(raw, root, check_paths=True)
    assert "data.source" in message and "no/such/cifar.tar.gz" in message and ".tar.gz" in message
    assert str(root / "no/such/cifar.tar.gz") in message


def test_data_source_must_be_an_archive_or_a_folder(project):
    root, raw = project
    (root / "notes.txt").write_text("x")
    raw["data"]["source"] = "notes.txt"
    assert "cifar-10-batches-py" in error_of(raw, root, check_paths=True)


def test_torchvision_source_explains_the_one_off_download(project):
    root, raw = project
    raw["data"]["source"] = "torchvision"
    message = error_of(raw, root, check_paths=True)
    assert "cifar-10-python.tar.gz" in message and "ACTSEARCH_CIFAR10" in message and "data.source" in message


def test_existing_local_source_passes(project):
    root, raw = project
    params = parse_params(raw, root, check_paths=True)
    assert params.source_path() == (root / "cifar.tar.gz").resolve()


def test_search_splits_must_fit_in_the_training_subset(raw):
    raw["data"]["train_size"] = 1000
    raw["data"]["search_train_size"], raw["data"]["search_val_size"] = 600, 600
    message = error_of(raw)
    assert "1200" in message and "data.train_size = 1000" in message


def test_search_split_must_hold_a_full_batch(raw):
    raw["data"]["search_val_size"] = raw["search"]["batch_size"] - 1
    assert "data.search_val_size" in error_of(raw)


def test_the_librarys_search_validation_is_reused(raw):
    raw["search"]["warmup_epochs"] = raw["search"]["epochs"]
    message = error_of(raw)
    assert message.startswith("params.yaml: search.warmup_epochs")


def test_the_librarys_training_validation_is_reused_under_the_params_key(raw):
    raw["evaluate"]["milestones"] = [1]  # with the cosine schedule
    message = error_of(raw)
    assert "evaluate.milestones" in message and "TrainConfig" not in message and "multistep" in message


def test_unavailable_device_is_rejected_before_any_work(raw):
    raw["study"]["device"] = "tpu"
    message = error_of(raw)
    assert "study.device" in message and "'tpu'" in message and "cpu" in message


def test_custom_activation_needs_its_genotype_file(project):
    root, raw = project
    raw["evaluate"]["custom"] = ["mine"]
    message = error_of(raw, root, check_paths=True)
    assert "evaluate.custom" in message and "mine" in message and "activations/mine.json" in message
    (root / "activations").mkdir()
    (root / "activations" / "mine.json").write_text("{not json")
    assert "mine.json" in error_of(raw, root, check_paths=True)
    RELU.save(root / "activations" / "mine.json")
    assert parse_params(raw, root, check_paths=True).activations()["mine"] == "custom"


def test_custom_names_must_not_clash_with_stage_names(raw):
    raw["evaluate"]["custom"] = ["relu"]
    assert "evaluate.custom = 'relu'" in error_of(raw)
    raw["evaluate"]["custom"] = ["my-act"]
    assert "'my-act'" in error_of(raw)


def test_yaml_syntax_error_is_one_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("study:\n  experiment: [unclosed\n")
    with pytest.raises(ParamsError) as caught:
        load_params(path)
    assert "\n" not in str(caught.value) and "not valid YAML" in str(caught.value)


# --- dvc.yaml agrees with params.yaml and the stage scripts -------------------------------------------------------
def _stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _schema_has(key: str) -> bool:
    node = Params
    for part in key.split("."):
        if not (isinstance(node, type) and issubclass(node, BaseModel)) or part not in node.model_fields:
            return False
        node = node.model_fields[part].annotation
    return True


@pytest.mark.parametrize("name", list(_stages()))
def test_each_stage_lists_its_own_script_existing_modules_and_known_params(name):
    stage = _stages()[name]
    module = re.search(r"python -m stages\.(\w+)", stage["cmd"]).group(1)
    assert f"stages/{module}.py" in stage["deps"]
    for dep in stage["deps"]:
        if dep.startswith(("pipeline/", "stages/")):
            assert (ROOT / dep).exists(), dep
    for listed in stage.get("params", []):
        for optimizer in ("darts", "gdas", "drnas"):
            key = listed.replace("${item.optimizer}", optimizer)
            assert _schema_has(key), f"{name} lists unknown param {key}"
    # Execution settings never invalidate results (docs/pipeline.md).
    assert not any(key.startswith(("study.", "preflight.")) or key == "data.cache_dir"
                   for key in stage.get("params", []))


# Modules that decide only HOW a stage runs, never WHAT it computes. Like the execution params, they are no stage's
# dependency (editing them reruns nothing), and the imports they make are not followed: those serve validation.
EXECUTION_ONLY = {
    "pipeline/study/tracking.py",  # MLflow run logging; no DVC output is read back from MLflow
    "pipeline/study/tracking_store.py",  # which MLflow store, its reachability check, locking and retries
    "pipeline/study/preflight.py",  # refuses to start on a nearly full disk; computes nothing
    # Resume files live outside the DVC outputs, and a resumed run equals an uninterrupted one (test_train.py,
    # test_search_resume.py): this module decides whether work is redone, not its result.
    "pipeline/training/checkpoint.py",
    # Where the resume file lives and whether the stage or the Ray runner deletes it: when work is redone, not what.
    "pipeline/study/stage_checkpoints.py",
    # params.yaml validation: rejects bad values and hands the accepted ones on unchanged (SearchParams.config and
    # EvaluateParams.train_config hand them to SearchConfig / TrainConfig, whose modules are deps).
    # The values themselves are the stages' DVC params. An edit to that copying needs `dvc repro -f`.
    "pipeline/study/config.py",
}
# Not listed on purpose: pipeline/training/device.py seeds every RNG and turns on bf16 autocast, so it shapes results.


def _imported_files(path: Path) -> set[str]:
    """Project files (pipeline/*.py, stages/*.py) that a file imports, function-local imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            continue
        for module in modules:
            relative = module.replace(".", "/") + ".py"
            if module.startswith(("pipeline.", "stages.")) and (ROOT / relative).is_file():
                found.add(relative)
    return found


def _code_closure(script: str) -> set[str]:
    """The script and every project module it imports transitively, stopping at execution-only modules."""
    seen, pending = {script}, [script]
    while pending:
        for module in _imported_files(ROOT / pending.pop()) - seen - EXECUTION_ONLY:
            seen.add(module)
            pending.append(module)
    return seen


def test_execution_only_modules_exist():
    assert all((ROOT / module).is_file() for module in EXECUTION_ONLY)


@pytest.mark.parametrize("name", list(_stages()))
def test_each_stage_lists_exactly_the_modules_its_script_imports(name):
    stage = _stages()[name]
    script = "stages/{}.py".format(re.search(r"python -m stages\.(\w+)", stage["cmd"]).group(1))
    imported = _code_closure(script)
    listed, folders = set(), []
    for dep in stage["deps"]:
        if dep.startswith(("pipeline/", "stages/")) and (ROOT / dep).is_dir():
            folders.append(dep)  # a whole subpackage: DVC hashes every file in it
            listed |= {str(p.relative_to(ROOT)) for p in (ROOT / dep).glob("*.py") if p.name != "__init__.py"}
        elif dep.startswith(("pipeline/", "stages/")):
            listed.add(dep)
    assert not imported - listed, f"{name} imports but does not list {sorted(imported - listed)}"
    # A folder is listed only where the stage uses all of it, so that no edit reruns a stage it cannot change.
    assert not listed - imported - EXECUTION_ONLY, f"{name} lists but never imports {sorted(listed - imported)}"
    for folder in folders:
        assert not {m for m in listed - EXECUTION_ONLY if m.startswith(folder + "/")} - imported, folder


def test_each_preset_has_its_own_mlflow_experiment_and_registered_model():
    """A GPU protocol run and the CPU default must not mix their runs or versions of one registered model
    (`<experiment>-best-searched`)."""
    files = [ROOT / "params.yaml", *sorted((ROOT / "presets").glob("*.yaml"))]
    names = [load_params(ROOT / "params.yaml", check_paths=False).study.experiment] + [
        load_preset(f, ROOT / "params.yaml", check_paths=False).study.experiment for f in files[1:]]
    assert len(set(names)) == len(files), dict(zip((f.name for f in files), names))


def test_checking_params_does_not_import_matplotlib():
    """Every stage validates its params at start-up and most draw nothing: the figure formats the params name come
    from a module without matplotlib (importing it added about 0.4 s to each of a study's 76 stage start-ups)."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", "import sys, pipeline.study.config; "
                           "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))"],
                          capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    assert done.stdout.strip() == "[]", done.stdout
