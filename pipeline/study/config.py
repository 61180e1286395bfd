"""params.yaml -> validated, typed study parameters; every mistake is ONE line naming key, value and what is allowed.

One pydantic model per params.yaml section. The `search` and `evaluate` sections extend the library's own settings
(`pipeline.search.search_config.SearchSettings`, `pipeline.training.train_config.TrainSettings`), so each key is
defined once, where the code that reads it lives; the sections below add only what the study itself needs. Every
key is required in params.yaml (DVC reads the listed ones from it too, and fails on missing ones), unknown keys
are refused with a close-match suggestion, and cross-section rules are checked by `Params`. The data source must
exist when `check_paths` (DVC hashes it as a dependency); the MLflow store is checked by the stages with
`pipeline.study.tracking_store.check_tracking`. The documentation is generated from these models
(`pipeline.study.params_docs`): `docs/params.schema.json` for editors and the table `docs/params.md`
(`python -m pipeline.study.config --schema docs/params.schema.json --table docs/params.md` rewrites both).
Files are read as DVC reads them (YAML 1.2 numbers such as `1e-3`: `pipeline.study.params_yaml`), and an error
names the file it is about.

`python -m pipeline.study.config [params.yaml]` validates a file without running anything.
"""
from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import AfterValidator, BaseModel, Field, PrivateAttr, ValidationError, model_validator

from pipeline.analysis.figure_formats import FIGURE_FORMATS
from pipeline.data.download import CIFAR10_URL, OFFLINE_ENV, is_url
from pipeline.data.sources import ARCHIVE_SUFFIXES
from pipeline.search.search_config import OPTIMIZERS, Network, Optimizer, SearchConfig, SearchSettings, Space
from pipeline.space.genotype import BASELINES, BETA_MODES, Genotype
from pipeline.study.params_docs import params_table, study_schema
from pipeline.study.params_yaml import load_yaml
from pipeline.study.tracking_store import resolve_tracking_uri
from pipeline.training.depth_check import DepthCheckSettings
from pipeline.training.device import resolve_device
from pipeline.training.train_config import SETTINGS, TrainConfig, TrainSettings, invalid

CIFAR_TRAIN_IMAGES, CIFAR_TEST_IMAGES = 50_000, 10_000
CUSTOM_DIR = "activations"  # user-supplied genotypes: activations/<name>.json
SCHEMA_FILE = "docs/params.schema.json"
TABLE_FILE = "docs/params.md"


class ParamsError(ValueError):
    """A params file is wrong; the message is one line that says which file, where, what and what is allowed."""


def bad(key: str, value: Any, allowed: str) -> ParamsError:
    """A wrong value; `parse_params` puts the file's name in front."""
    return ParamsError(f"{key} = {value!r} is invalid; allowed: {allowed}")


def _distinct(values: list) -> list:
    if len(set(map(repr, values))) != len(values):
        raise ValueError("a list without repeated entries")
    return values


def _available(device: str) -> str:
    resolve_device(device)  # ValueError naming the devices available here
    return device


# Lists that name matrix values in dvc.yaml: at least one entry (custom: may be empty), none repeated.
def Choices(item, min_length: int = 1):  # noqa: N802 - a type alias with parameters
    return Annotated[list[item], Field(min_length=min_length), AfterValidator(_distinct)]


CustomName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$",
                                  description=f"a genotype file {CUSTOM_DIR}/<name>.json; '-' separates matrix "
                                              "values in DVC stage names")]


class StudyParams(BaseModel):
    model_config = SETTINGS
    experiment: str = Field(min_length=1, description="MLflow experiment name")
    tracking_uri: Optional[str] = Field(description="null: sqlite mlflow.db at the project root (artifacts in "
                                                    "mlartifacts/) | an http(s):// server | a sqlite:/// path; the "
                                                    "environment variable MLFLOW_TRACKING_URI wins over both")
    mlflow: bool = Field(description="false: no MLflow runs (the DVC outputs are written all the same)")
    device: Annotated[str, AfterValidator(_available)] = Field(description="auto (CUDA, then MPS, then CPU) | "
                                                                           "cpu | cuda | cuda:N | mps; an unavailable "
                                                                           "device is an error")


class PreflightParams(BaseModel):
    model_config = SETTINGS
    min_free_mb: float = Field(ge=0, description="a stage refuses to start with less free disk space (MiB)")


class DataParams(BaseModel):
    model_config = SETTINGS
    source: str = Field(min_length=1, description="a URL (the original CIFAR-10, fetched once by the download "
                        "stage) or a local archive, cifar-10-batches-py folder or train/ test/ image tree; offline, "
                        f"the environment variable {OFFLINE_ENV} wins")
    md5: Optional[str] = Field(pattern=r"^[0-9a-f]{32}$", description="MD5 of the download; null: unchecked")
    cache_dir: str = Field(min_length=1, description="decoded-image cache, one file per source (not a DVC output; "
                                                     "safe to delete)")
    train_size: Optional[int] = Field(ge=1, le=CIFAR_TRAIN_IMAGES, description="class-balanced subset of the 50,000 "
                                                                               "training images; null: all")
    test_size: Optional[int] = Field(ge=1, le=CIFAR_TEST_IMAGES, description="class-balanced subset of the 10,000 "
                                                                            "test images; null: all")
    search_train_size: int = Field(ge=1, description="search: images for the supernet's weights")
    search_val_size: int = Field(ge=1, description="search: images for the architecture step and the "
                                                   "discretization gap (disjoint from search_train_size's)")
    seed: int = Field(ge=0, description="seed of the balanced subsets and of the search split")


class SearchParams(SearchSettings):
    optimizers: Choices(Optimizer) = Field(description="the search methods, one search each: a DVC matrix axis")
    spaces: Choices(Space) = Field(description="simple: b1(u1(x), u2(x)) | complex: b2(u3(b1(u1(x), u2(x))), "
                                               "u4(x)); one search each: a DVC matrix axis")
    seeds: Choices(Annotated[int, Field(ge=0)]) = Field(description="one search per seed: a DVC matrix axis")

    def config(self, optimizer: str, space: str, seed: int, device: str = "auto") -> SearchConfig:
        """One search's settings; the other optimizers' own sections keep their defaults (no DVC param of it)."""
        others = {name for name in SearchConfig.model_fields if name in OPTIMIZERS and name != optimizer}
        values = self.model_dump(exclude={"optimizers", "spaces", "seeds"} | others)
        return SearchConfig(**values, optimizer=optimizer, space=space, seed=seed, device=device)

    def names(self) -> list[str]:
        """The searches' found functions, `<optimizer>-<space>-s<seed>`, in params order."""
        return [searched_name(optimizer, space, seed)
                for optimizer in self.optimizers for space in self.spaces for seed in self.seeds]

    def selected_names(self) -> list[str]:
        """The retrained searched activations, one per optimizer x space (`<optimizer>-<space>`: the select stage
        chooses which search seed's function it is)."""
        return [f"{optimizer}-{space}" for optimizer in self.optimizers for space in self.spaces]


def searched_name(optimizer: str, space: str, seed: int) -> str:
    """A searched activation's name and results folder, e.g. `drnas-complex-s1`. (DVC names the stages from the
    matrix values, so the stage is `search@drnas-complex-1`: `search_stage_suffix`.)"""
    return f"{optimizer}-{space}-s{seed}"


def parse_searched(name: str) -> tuple[str, str, int]:
    """`drnas-complex-s1` -> ("drnas", "complex", 1); a ParamsError for anything else."""
    parts = name.split("-")
    if len(parts) != 3 or not re.fullmatch(r"s[0-9]+", parts[2]):
        raise ParamsError(f"{name!r} is not a searched activation name <optimizer>-<space>-s<seed>")
    return parts[0], parts[1], int(parts[2][1:])


def parse_selected(name: str) -> tuple[str, str]:
    """`drnas-complex` (a retrained searched activation: SearchParams.selected_names) -> ("drnas", "complex")."""
    parts = name.split("-")
    if len(parts) != 2 or not all(parts):
        raise ParamsError(f"{name!r} is not a retrained searched activation name <optimizer>-<space>")
    return parts[0], parts[1]


def search_stage_suffix(optimizer: str, space: str, seed: int) -> str:
    """The DVC matrix suffix of a search's stages: `drnas-complex-1` (DVC joins the matrix values with '-')."""
    return f"{optimizer}-{space}-{seed}"


class DiscretizeParams(BaseModel):
    model_config = SETTINGS
    batch_size: int = Field(ge=1, description="evaluation batch for the discretization gap")
    depth_check: DepthCheckSettings = Field(description=(
        "how the found function carries signal through each evaluation network at initialisation, and a flag "
        "before retraining (docs/depth_check.md)"))


class EvaluateParams(TrainSettings):
    networks: Choices(Network) = Field(description="the retraining networks (CIFAR ResNets, depth 6n+2): a DVC "
                                                  "matrix axis")
    seeds: Choices(Annotated[int, Field(ge=0)]) = Field(description="retraining seeds, one run each: a DVC matrix "
                                                                   "axis")
    baselines: Choices(Literal[tuple(BASELINES)]) = Field(description="reference activations retrained beside the "
                                                                     "searched ones")
    custom: Choices(CustomName, min_length=0) = Field(description="your own activations, retrained like the "
                                                                 "searched ones (may be empty)")
    test_batch_size: int = Field(ge=1, description="batch of the test-set evaluations")
    beta_mode: Literal[BETA_MODES] = Field(description="the searched functions' betas: scalar | channel")
    betas: Literal["shared", "per_site"] = Field(description="shared: the function is retrained as it was searched, "
                                                             "one set of betas for the whole network starting from "
                                                             "the searched values | per_site: a copy per activation "
                                                             "site (needed for beta_mode channel)")
    train_betas: bool = Field(description="keep training the betas while retraining; false: frozen at the searched "
                                          "values")

    def train_config(self, seed: int, device: str = "auto") -> TrainConfig:
        return TrainConfig(**self.model_dump(include=set(TrainSettings.model_fields)), seed=seed, device=device)


class ReportParams(BaseModel):
    model_config = SETTINGS
    figure_format: Literal[FIGURE_FORMATS] = Field(description="the aggregate stage's figures (reports/figures): "
                                                               "png | pdf | svg (vector, for papers)")


class Params(BaseModel):
    """The whole params.yaml; relative paths in it are relative to the project root (`root`)."""
    model_config = SETTINGS
    study: StudyParams
    preflight: PreflightParams
    data: DataParams
    search: SearchParams
    discretize: DiscretizeParams
    evaluate: EvaluateParams
    report: ReportParams
    _root: Path = PrivateAttr(default=Path("."))

    @property
    def root(self) -> Path:
        return self._root

    def source_path(self) -> Path:
        return (self.root / self.data.source).resolve()

    def custom_path(self, name: str) -> Path:
        return self.root / CUSTOM_DIR / f"{name}.json"

    def tracking_uri(self) -> str:
        return resolve_tracking_uri(self.root, self.study.tracking_uri)

    def search_seed(self, seed: int) -> int:
        """A stage's --seed, checked against search.seeds (dvc.yaml and params.yaml must agree)."""
        if seed not in self.search.seeds:
            raise ParamsError(f"params.yaml: search seed {seed} is not in search.seeds = {list(self.search.seeds)}; "
                              "check dvc.yaml against params.yaml")
        return seed

    def activations(self) -> dict[str, str]:
        """Every evaluated activation name -> its origin: 'baseline', 'searched' or 'custom'."""
        return ({name: "baseline" for name in self.evaluate.baselines}
                | {name: "searched" for name in self.search.selected_names()}
                | {name: "custom" for name in self.evaluate.custom})

    @model_validator(mode="after")
    def _consistent(self):
        data, search, evaluate = self.data, self.search, self.evaluate
        train_size = data.train_size or CIFAR_TRAIN_IMAGES
        if data.search_train_size + data.search_val_size > train_size:
            raise invalid("data.search_train_size + data.search_val_size",
                          data.search_train_size + data.search_val_size,
                          f"at most data.train_size = {train_size} (the search splits are cut from the training "
                          "subset)")
        for key in ("search_train_size", "search_val_size"):
            if getattr(data, key) < search.batch_size:
                raise invalid(f"data.{key}", getattr(data, key), f">= search.batch_size = {search.batch_size} "
                                                                 "(batches are full)")
        if train_size < evaluate.batch_size:
            raise invalid("data.train_size", data.train_size, f">= evaluate.batch_size = {evaluate.batch_size}")
        if evaluate.betas == "shared" and evaluate.beta_mode != "scalar":
            raise invalid("evaluate.beta_mode", evaluate.beta_mode, "scalar with evaluate.betas: shared (shared "
                          "betas are one number per operator; per-channel betas need evaluate.betas: per_site)")
        taken = set(evaluate.baselines) | set(search.names()) | set(search.selected_names()) | set(BASELINES)
        for name in evaluate.custom:
            if name in taken:
                raise invalid("evaluate.custom", name, "names that differ from the baselines, <optimizer>-<space> "
                                                       "and <optimizer>-<space>-s<seed>")
        return self


# --- ValidationError -> one line --------------------------------------------------------------------------------
def _dotted(loc) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def _model_at(loc) -> type[BaseModel]:
    model = Params
    for part in loc:
        model = model.model_fields[part].annotation
    return model


def _missing_keys(model: BaseModel, prefix: str = "") -> list[str]:
    """Keys that params.yaml left out although the model has a default for them (every key is required)."""
    missing = [f"{prefix}{name}" for name in type(model).model_fields if name not in model.model_fields_set]
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            missing += _missing_keys(value, f"{prefix}{name}.")
    return missing


# Keys earlier versions had: an old params file gets told what became of them rather than "unknown key".
RETIRED = {
    "cluster": "the Ray runner's settings are in cluster.yaml now, so that DVC shows only what stages read; move "
               "the section there",
    "search.compile_min_steps": "compiled searches now run one kernel for the whole shrinking schedule, so there is "
                                "no per-set choice left to make",
}


def _missing(key: str) -> ParamsError:
    section, _, _ = key.rpartition(".")
    return ParamsError(f"{key} is missing from {section or 'the top level'}; every key is required "
                       f"(see {TABLE_FILE} for its meaning and params.yaml for the default study's value)")


def _one_line(error: ValidationError) -> ParamsError:
    """The first problem of a ValidationError (unknown keys first: they explain the missing ones) as one line."""
    first = sorted(error.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
    loc, kind, ctx = first["loc"], first["type"], first.get("ctx", {})
    key = _dotted(loc)
    if kind == "extra_forbidden" and key in RETIRED:
        return ParamsError(f"{key} was removed ({RETIRED[key]}); delete it from the file")
    if kind == "extra_forbidden":
        allowed = sorted(_model_at(loc[:-1]).model_fields)
        prefix = _dotted(loc[:-1]) + "." if loc[:-1] else ""
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
        return ParamsError(f"unknown key {key}{hint}; allowed keys in "
                           f"{prefix.rstrip('.') or 'the top level'}: {allowed}")
    if kind == "missing":
        return _missing(key)
    if kind == "invalid_setting":
        return ParamsError(f"{_dotted(loc + (ctx['field'],))} = {ctx['value']} is invalid; "
                           f"allowed: {ctx['allowed']}")
    reason = first["msg"].removeprefix("Value error, ").removeprefix("Input should be ")
    if kind.startswith("model_") or kind == "dict_type":
        reason = f"a mapping with keys {sorted(_model_at(loc).model_fields)}"
    return ParamsError(f"{key or 'the file'} = {first['input']!r} is invalid; allowed: "
                       f"{' '.join(reason.split())}")


def parse_params(raw: Any, root: Path, check_paths: bool = True, source: str = "params.yaml") -> Params:
    """Validate a params mapping (as read from the file named `source`) and build the typed parameters.

    A mistake is a ParamsError of one line that starts with `source`, e.g. `presets/full.yaml: search.epochs ...`.
    """
    try:
        return _parse(raw, root, check_paths)
    except ParamsError as error:
        raise ParamsError(f"{source}: {error}") from None


def _parse(raw: Any, root: Path, check_paths: bool) -> Params:
    try:
        params = Params.model_validate(raw)
    except ValidationError as error:
        raise _one_line(error) from None
    missing = _missing_keys(params)
    if missing:
        raise _missing(missing[0])
    params._root = Path(root).resolve()
    if check_paths:
        _check_paths(params)
    return params


def _shown(path: Path) -> str:
    """A file's name as a user typed it: relative to the working directory when it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def load_params(path: str | Path = "params.yaml", check_paths: bool = True,
                root: str | Path | None = None) -> Params:
    """Read and validate params.yaml; its relative paths are relative to `root`, by default the file's folder."""
    path = Path(path)
    try:
        raw = load_yaml(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such file; run from the project root (`git checkout params.yaml` restores "
                          f"the default study)") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}:{where} is not valid YAML ({getattr(err, 'problem', err)})") from None
    return parse_params(raw, Path(root) if root is not None else path.resolve().parent, check_paths, _shown(path))


def _check_paths(params: Params) -> None:
    source = params.data.source
    if source == "torchvision":
        raise bad("data.source", source, f"the URL of the original archive ({CIFAR10_URL}), which the download "
                  f"stage fetches once, or a local copy (offline: {OFFLINE_ENV}=/path/to/copy)")
    if is_url(source):
        return _check_custom(params)
    path = params.source_path()
    kinds = f"an archive ({', '.join(ARCHIVE_SUFFIXES)}), a cifar-10-batches-py folder or a train/ test/ image tree"
    if not path.exists():
        raise bad("data.source", source, f"an existing path ({path} does not exist): {kinds}")
    if path.is_file() and not path.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise bad("data.source", source, kinds)
    _check_custom(params)


def _check_custom(params: Params) -> None:
    for name in params.evaluate.custom:
        file = params.custom_path(name)
        if not file.is_file():
            raise bad("evaluate.custom", name, f"names of genotype files in {CUSTOM_DIR}/ ({file} does not exist)")
        try:
            Genotype.load(file)
        except ValueError as err:
            raise ParamsError(f"evaluate.custom = {name!r}: {err}") from None


def json_schema() -> str:
    """The JSON schema of params.yaml as the loader applies it: every key required, no defaults (params_docs)."""
    schema = study_schema(Params) | {"title": "actsearch params.yaml",
                                     "description": "Every key is required; the committed params.yaml is the "
                                                    f"default study. Key by key: {TABLE_FILE}"}
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def params_markdown() -> str:
    """docs/params.md: a table per section of every key, from the same schema, in params.yaml's order."""
    return params_table(study_schema(Params))


def summary(file: str | Path, params: Params) -> str:
    """The line `actsearch check` prints for a valid file."""
    return (f"{file} is valid: {len(params.activations())} activations x {len(params.evaluate.networks)} networks x "
            f"{len(params.evaluate.seeds)} seeds, {len(params.search.names())} searches")


if __name__ == "__main__":  # the older spelling of `actsearch check [file]` and `actsearch schema` (study/cli.py)
    parser = argparse.ArgumentParser(description="Check a params file (default params.yaml) without running it.")
    parser.add_argument("file", nargs="?", default="params.yaml")
    parser.add_argument("--schema", metavar="OUT", help=f"write the JSON schema of params.yaml (e.g. {SCHEMA_FILE})")
    parser.add_argument("--table", metavar="OUT", help=f"write the Markdown table of the params (e.g. {TABLE_FILE})")
    args = parser.parse_args()
    if args.schema or args.table:
        if args.schema:
            Path(args.schema).write_text(json_schema())
        if args.table:
            Path(args.table).write_text(params_markdown())
        sys.exit(0)
    try:  # run from the project root: a preset's relative paths are meant relative to it, as in params.yaml
        print(summary(args.file, load_params(args.file, root=Path.cwd())))
    except ParamsError as error:
        sys.exit(f"error: {error}")
