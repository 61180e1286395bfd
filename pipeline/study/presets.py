"""Presets: small overlays of params.yaml, holding only the keys a study changes.

`python -m pipeline.study.cli preset smoke` writes presets/smoke.yaml's keys into params.yaml. It keeps every
other key and every comment, as `dvc exp run -S key=value` edits the file. `git checkout params.yaml` returns to
the default study. A preset composes with params.yaml as it is now, so apply it to the committed default to get
the study it describes. A key that params.yaml does not have is refused, naming the preset: a typo never passes
silently. The composed study is validated in full before anything is written.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from pipeline.study.config import Params, ParamsError, parse_params
from pipeline.study.params_yaml import load_yaml

PRESETS_DIR = "presets"


def preset_path(name: str | Path, root: Path) -> Path:
    """presets/<name>.yaml under `root`, or the path itself when given as a .yaml file."""
    path = Path(name) if str(name).endswith((".yaml", ".yml")) else root / PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (root / PRESETS_DIR).glob("*.yaml"))
        raise ParamsError(f"{path}: no such preset (presets: {', '.join(known) or 'none'})")
    return path


def _read(path: Path) -> dict:
    try:
        raw = load_yaml(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: is not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: a preset is a mapping of params.yaml keys to new values, got {type(raw).__name__}")
    return raw


def compose(base: dict, overlay: dict, source: str, prefix: str = "") -> dict:
    """`base` with `overlay`'s values; a mapping in both merges key by key, anything else is replaced."""
    composed = dict(base)
    for key, value in overlay.items():
        dotted = f"{prefix}{key}"
        if not isinstance(base, dict) or key not in base:
            raise ParamsError(f"{source}: {dotted} is not a key of params.yaml; check its spelling (docs/params.md "
                              "lists every key)")
        if isinstance(value, dict) and isinstance(base[key], dict):
            composed[key] = compose(base[key], value, source, f"{dotted}.")
        else:
            composed[key] = value
    return composed


def _composed(name: str | Path, params_file: Path) -> tuple[dict, str]:
    root = params_file.resolve().parent
    path = preset_path(name, root)
    source = f"{PRESETS_DIR}/{path.name}" if path.resolve().parent == (root / PRESETS_DIR).resolve() else str(path)
    return compose(_read(params_file), _read(path), source), source


def preset_params(name: str | Path, params_file: Path) -> dict:
    """The params mapping that applying preset `name` to `params_file` gives (not validated)."""
    return _composed(name, params_file)[0]


def load_preset(name: str | Path, params_file: Path, check_paths: bool = True) -> Params:
    """The study that applying preset `name` to `params_file` gives, validated; errors name the preset's file."""
    composed, source = _composed(name, params_file)
    return parse_params(composed, params_file.resolve().parent, check_paths, source)


def _flow(value: Any) -> Any:
    """A new list or mapping written inline, `[0, 1]`, as params.yaml writes short values."""
    if isinstance(value, list):
        seq = CommentedSeq(value)
        seq.fa.set_flow_style()
        return seq
    if isinstance(value, dict):
        mapping = CommentedMap({key: _flow(item) for key, item in value.items()})
        mapping.fa.set_flow_style()
        return mapping
    return value


def _set(document: CommentedMap, overlay: dict) -> list[str]:
    changed = []
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(document[key], dict):
            changed += [f"{key}.{inner}" for inner in _set(document[key], value)]
        elif document[key] != value:
            document[key] = _flow(value)
            changed.append(key)
    return changed


def apply_preset(name: str | Path, params_file: Path) -> list[str]:
    """Write preset `name` into `params_file` (comments kept); return the dotted keys whose value changed."""
    load_preset(name, params_file, check_paths=False)  # refuses unknown keys and invalid studies before writing
    root = params_file.resolve().parent
    editor = YAML()
    editor.width = 4096  # never wrap a long line
    editor.representer.add_representer(type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null",
                                                                                       "null"))
    document = editor.load(params_file.read_text())
    changed = _set(document, _read(preset_path(name, root)))
    out = io.StringIO()
    editor.dump(document, out)
    params_file.write_text(out.getvalue())
    return changed
