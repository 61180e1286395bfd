"""Every param a stage's code reads is one of that stage's `params` in dvc.yaml (test_config.py checks the
converse): otherwise changing it would not rerun the stage, and DVC would serve stale results.

What a stage reads is found from its script: attribute chains `params.<section>.<key>` (also through an alias
`cfg = params.<section>`, and `vars(cfg)`), and the methods it calls on the params (`params.search.config(...)`,
`params.activations()`), which are run here on a recording stand-in for the params to see which fields they touch.
Left out on purpose: execution settings (study.*, preflight.*, data.cache_dir; see dvc.yaml) and the matrix axes
(search.optimizers, ...), which decide which stages exist rather than what one computes.
"""
import ast
import dataclasses
import inspect
import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from pipeline.study.config import load_params

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
PARAMS = load_params(ROOT / "params.yaml", check_paths=False)
EXECUTION = ("study.", "preflight.", "data.cache_dir")
MATRIX_AXES = {ref for stage in STAGES.values() for ref in re.findall(r"\$\{([\w.]+)\}", str(stage.get("matrix", {})))}


class Recorder:
    """Stands in for the params (or one section): records every field read, as dotted keys, into `reads`."""

    def __init__(self, target, prefix: str, reads: set):
        self._target, self._prefix, self._reads = target, prefix, reads

    def __getattr__(self, name):
        value = getattr(self._target, name)
        key = f"{self._prefix}{name}"
        if name == "model_dump":  # pydantic: every field in the dump is read
            return lambda *args, **kwargs: self._record_dump(value(*args, **kwargs), self._prefix)
        if inspect.ismethod(value):  # run the method with this recorder as `self`
            return lambda *args, **kwargs: getattr(type(self._target), name)(self, *args, **kwargs)
        if dataclasses.is_dataclass(value) or isinstance(value, BaseModel):
            return Recorder(value, key + ".", self._reads)
        if isinstance(value, dict):
            return RecordingDict(value, key + ".", self._reads)
        self._reads.add(key)
        return value


    def _record_dump(self, dumped: dict, prefix: str) -> dict:
        for key, value in dumped.items():
            if isinstance(value, dict) and value:
                self._record_dump(value, f"{prefix}{key}.")
            else:
                self._reads.add(f"{prefix}{key}")
        return dumped


class RecordingDict(dict):
    def __init__(self, data, prefix, reads):
        super().__init__(data)
        self._prefix, self._reads = prefix, reads

    def __getitem__(self, key):
        self._reads.add(f"{self._prefix}{key}")
        return super().__getitem__(key)


def _chain(node) -> list[str] | None:
    """`params.search.config` -> ["params", "search", "config"]; None if it is not a plain name chain."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id] + parts[::-1]
    return None


def _fields(obj) -> list[str]:
    return [f.name for f in dataclasses.fields(obj)] if dataclasses.is_dataclass(obj) else list(obj.model_fields)


def _call_args(method, item: dict) -> list:
    """Arguments for a params method, by parameter name, from the stage's matrix item."""
    defaults = {"device": "cpu", "seed": 0, "name": "x"}
    args = []
    for name, parameter in inspect.signature(method).parameters.items():
        if name == "self":
            continue
        if name in item:
            args.append(item[name])
        elif name in defaults:
            args.append(defaults[name])
        elif parameter.default is inspect.Parameter.empty:
            raise AssertionError(f"no value for {method.__qualname__}({name}) in the matrix item {item}")
    return args


def reads_of_stage(script: Path, item: dict) -> set[str]:
    tree = ast.parse(script.read_text())
    aliases = {}  # local name -> the params section it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            chain = _chain(node.value)
            if chain and chain[0] == "params" and len(chain) == 2:
                aliases[node.targets[0].id] = chain[1]
    reads: set[str] = set()
    for node in ast.walk(tree):
        chain = _chain(node) if isinstance(node, ast.Attribute) else None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "vars" and \
                node.args and isinstance(node.args[0], ast.Name) and node.args[0].id in aliases:
            section = aliases[node.args[0].id]
            reads |= {f"{section}.{field}" for field in _fields(getattr(PARAMS, section))}
        if not chain:
            continue
        if chain[0] in aliases:
            chain = ["params", aliases[chain[0]]] + chain[1:]
        if chain[0] != "params" or len(chain) < 2:
            continue
        target, path = PARAMS, []
        for part in chain[1:]:
            value = getattr(target, part)
            if inspect.ismethod(value):
                owner = Recorder(target, "".join(f"{p}." for p in path), reads)
                getattr(owner, part)(*_call_args(value, item))
                break
            path.append(part)
            target = value
            if not (dataclasses.is_dataclass(value) or isinstance(value, BaseModel)):
                reads.add(".".join(path))
                break
    return reads


def _items(stage: dict) -> list[dict]:
    """One matrix item per optimizer (what `search.${item.optimizer}` varies with), else one item."""
    matrix = stage.get("matrix", {})
    optimizers = PARAMS.search.optimizers if "optimizer" in matrix else [None]
    item = {"space": PARAMS.search.spaces[0], "network": PARAMS.evaluate.networks[0], "seed": 0}
    return [{**item, "optimizer": optimizer} if optimizer else item for optimizer in optimizers]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_param_a_stage_reads_is_listed_in_its_dvc_params(name):
    stage = STAGES[name]
    module = re.search(r"python -m stages\.(\w+)", stage["cmd"]).group(1)
    script = ROOT / "stages" / f"{module}.py"
    for item in _items(stage):
        listed = [key.replace("${item.optimizer}", item.get("optimizer") or "") for key in stage.get("params", [])]
        reads = {key for key in reads_of_stage(script, item)
                 if not key.startswith(EXECUTION) and key not in MATRIX_AXES and key != "root"}
        unlisted = sorted(key for key in reads if not any(key == k or key.startswith(k + ".") for k in listed))
        assert not unlisted, f"{name} ({item}) reads {unlisted} but dvc.yaml does not list them under its params"


def test_the_reader_sees_what_the_search_config_reads():
    """The recorder itself: the search stage's config call reads the shared keys and only DARTS' own section."""
    reads = reads_of_stage(ROOT / "stages" / "search.py", {"optimizer": "darts", "space": "simple"})
    assert {"search.epochs", "search.arch_lr", "search.darts.second_order"} <= reads
    assert not any(key.startswith(("search.gdas", "search.drnas")) for key in reads)
