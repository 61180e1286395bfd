"""params.yaml -> validated, typed study parameters; every mistake is ONE line naming key, value and what is allowed.

Every stage calls `load_params()` first, so a typo anywhere in params.yaml stops the first stage before any work.
All keys are required (DVC reads the listed ones from params.yaml too, and fails on missing ones), unknown keys are
rejected with a close-match suggestion, and values are checked against `pipeline.study.params_schema`, then for
consistency here, then by the library's own `SearchConfig` / `TrainConfig` validation. The data source must be a
local path that exists (DVC hashes it as a dependency); the MLflow store is checked by the stages with
`pipeline.study.tracking_store.check_tracking`.

`python -m pipeline.study.config [params.yaml]` validates a file without running anything.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from pipeline.space.genotype import BASELINES, Genotype
from pipeline.study.param_checks import ParamsError, bad
from pipeline.study.params_schema import CUSTOM_DIR, SCHEMA, check_section
from pipeline.search.loop import SearchConfig
from pipeline.data.sources import ARCHIVE_SUFFIXES
from pipeline.study.tracking_store import resolve_tracking_uri
from pipeline.training.train_config import TrainConfig

CIFAR_TRAIN_IMAGES, CIFAR_TEST_IMAGES = 50_000, 10_000


# --- typed parameters ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StudyParams:
    experiment: str  # MLflow experiment name
    tracking_uri: Optional[str]  # None: sqlite mlflow.db at the project root (env MLFLOW_TRACKING_URI wins)
    mlflow: bool
    device: str


@dataclass(frozen=True)
class PreflightParams:
    min_free_mb: float  # a stage refuses to start with less free disk space (outputs, checkpoints, DVC cache)


@dataclass(frozen=True)
class DataParams:
    source: str
    cache_dir: str
    train_size: Optional[int]  # None: all 50,000
    test_size: Optional[int]  # None: all 10,000
    search_train_size: int  # taken from the training subset: images for the supernet's weights
    search_val_size: int  # disjoint from those: images for the architecture step and the discretization gap
    seed: int


@dataclass(frozen=True)
class SearchParams:
    optimizers: tuple[str, ...]
    spaces: tuple[str, ...]
    op_set: Any
    network: str
    epochs: int
    batch_size: int
    lr: float
    lr_min: float
    momentum: float
    weight_decay: float
    grad_clip: float
    arch_lr: float
    arch_betas: tuple[float, float]
    arch_weight_decay: float
    beta_mode: str
    betas_with: str
    warmup_epochs: int
    warmstart_epochs: int  # GRAFS: weight steps with plain ReLU for these first epochs
    start_shrinking: Optional[int]  # GRAFS: first epoch (from 0) of progressive shrinking; None: no shrinking
    bn_recalibration_batches: int  # BatchNorm recalibration of the discretized network, in training batches
    select: str  # best | last: the epoch whose supernet gives the genotype
    selection: str  # argmax | perturbation: how the genotype is read off that supernet
    seed: int
    amp: bool
    darts: dict
    gdas: dict
    drnas: dict

    def config(self, optimizer: str, space: str, device: str = "auto") -> SearchConfig:
        common = {f.name: getattr(self, f.name) for f in dataclasses.fields(SearchConfig)
                  if hasattr(self, f.name) and f.name not in ("optimizer", "space", "device")}
        return SearchConfig(optimizer=optimizer, space=space, device=device, **common,
                            second_order=optimizer == "darts" and self.darts["second_order"],
                            tau_max=self.gdas["tau_max"], tau_min=self.gdas["tau_min"],
                            drnas_regularizer=self.drnas["regularizer"], drnas_reg_scale=self.drnas["reg_scale"],
                            per_site_sample=self.drnas["per_site_sample"])

    def names(self) -> list[str]:
        """The searched activations, `<optimizer>-<space>`, in params order."""
        return [f"{optimizer}-{space}" for optimizer in self.optimizers for space in self.spaces]


@dataclass(frozen=True)
class DiscretizeParams:
    batch_size: int


_TRAIN_FIELDS = ("epochs", "batch_size", "lr", "momentum", "nesterov", "weight_decay", "schedule", "milestones",
                 "gamma", "warmup_epochs", "label_smoothing", "grad_clip", "amp", "divergence_loss", "chance_margin")


@dataclass(frozen=True)
class EvaluateParams:
    networks: tuple[str, ...]
    seeds: tuple[int, ...]
    baselines: tuple[str, ...]
    custom: tuple[str, ...]
    epochs: int
    batch_size: int
    test_batch_size: int
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    schedule: str
    milestones: tuple[int, ...]
    gamma: float
    warmup_epochs: int
    label_smoothing: float
    grad_clip: Optional[float]
    amp: bool
    beta_mode: str
    train_betas: bool
    divergence_loss: float
    chance_margin: float

    def train_config(self, seed: int, device: str = "auto") -> TrainConfig:
        values = {name: getattr(self, name) for name in _TRAIN_FIELDS}
        return TrainConfig(**values | {"milestones": list(self.milestones)}, seed=seed, device=device)


@dataclass(frozen=True)
class Params:
    root: Path  # the project root; relative paths in params.yaml are relative to it
    study: StudyParams
    preflight: PreflightParams
    data: DataParams
    search: SearchParams
    discretize: DiscretizeParams
    evaluate: EvaluateParams

    def source_path(self) -> Path:
        return (self.root / self.data.source).resolve()

    def custom_path(self, name: str) -> Path:
        return self.root / CUSTOM_DIR / f"{name}.json"

    def tracking_uri(self) -> str:
        return resolve_tracking_uri(self.root, self.study.tracking_uri)

    def activations(self) -> dict[str, str]:
        """Every evaluated activation name -> its origin: 'baseline', 'searched' or 'custom'."""
        return ({name: "baseline" for name in self.evaluate.baselines}
                | {name: "searched" for name in self.search.names()}
                | {name: "custom" for name in self.evaluate.custom})


_SECTIONS = {"study": StudyParams, "preflight": PreflightParams, "data": DataParams, "search": SearchParams,
             "discretize": DiscretizeParams, "evaluate": EvaluateParams}


def parse_params(raw: Any, root: Path, check_paths: bool = True) -> Params:
    """Validate a params mapping (as read from params.yaml) and build the typed parameters."""
    values = check_section(SCHEMA, raw, "")
    params = Params(Path(root).resolve(), **{name: cls(**values[name]) for name, cls in _SECTIONS.items()})
    _check_consistency(params)
    if check_paths:
        _check_paths(params)
    return params


def load_params(path: str | Path = "params.yaml", check_paths: bool = True,
                root: str | Path | None = None) -> Params:
    """Read and validate params.yaml; its relative paths are relative to `root`, by default the file's folder."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such file; run from the project root or copy a preset: "
                          f"cp presets/full.yaml params.yaml") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}:{where} is not valid YAML ({getattr(err, 'problem', err)})") from None
    return parse_params(raw, Path(root) if root is not None else path.resolve().parent, check_paths)


def _check_consistency(params: Params) -> None:
    data, search, evaluate = params.data, params.search, params.evaluate
    train_size = data.train_size or CIFAR_TRAIN_IMAGES
    if data.train_size is not None and data.train_size > CIFAR_TRAIN_IMAGES:
        raise bad("data.train_size", data.train_size, f"null (all) or at most {CIFAR_TRAIN_IMAGES}")
    if data.test_size is not None and data.test_size > CIFAR_TEST_IMAGES:
        raise bad("data.test_size", data.test_size, f"null (all) or at most {CIFAR_TEST_IMAGES}")
    if data.search_train_size + data.search_val_size > train_size:
        raise bad("data.search_train_size + data.search_val_size", data.search_train_size + data.search_val_size,
                   f"at most data.train_size = {train_size} (the search splits are cut from the training subset)")
    for key, size in (("data.search_train_size", data.search_train_size),
                      ("data.search_val_size", data.search_val_size)):
        if size < search.batch_size:
            raise bad(key, size, f">= search.batch_size = {search.batch_size} (batches are full)")
    if train_size < evaluate.batch_size:
        raise bad("data.train_size", data.train_size, f">= evaluate.batch_size = {evaluate.batch_size}")
    for optimizer in search.optimizers:
        for space in search.spaces:
            try:
                search.config(optimizer, space, params.study.device)
            except ValueError as err:
                raise ParamsError(f"params.yaml: {err}") from None
    try:
        evaluate.train_config(evaluate.seeds[0], params.study.device)
    except ValueError as err:
        raise ParamsError(f"params.yaml: {str(err).replace('TrainConfig.', 'evaluate.')}") from None
    taken = set(evaluate.baselines) | set(search.names())
    for name in evaluate.custom:
        if name in taken or name in BASELINES:
            raise bad("evaluate.custom", name, "names that differ from the baselines and <optimizer>-<space>")


def _check_paths(params: Params) -> None:
    source = params.data.source
    if source == "torchvision":
        raise bad("data.source", source, "a local path that DVC can hash; download once with "
                   "`python -m stages.prepare --download data/torchvision` (needs internet), then set "
                   "data.source: data/torchvision/cifar-10-batches-py")
    path = params.source_path()
    kinds = f"an archive ({', '.join(ARCHIVE_SUFFIXES)}), a cifar-10-batches-py folder or a train/ test/ image tree"
    if not path.exists():
        raise bad("data.source", source, f"an existing path ({path} does not exist): {kinds}")
    if path.is_file() and not path.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise bad("data.source", source, kinds)
    for name in params.evaluate.custom:
        file = params.custom_path(name)
        if not file.is_file():
            raise bad("evaluate.custom", name, f"names of genotype files in {CUSTOM_DIR}/ ({file} does not exist)")
        try:
            Genotype.load(file)
        except ValueError as err:
            raise ParamsError(f"params.yaml: evaluate.custom = {name!r}: {err}") from None


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "params.yaml"
    try:  # run from the project root: a preset's relative paths are meant relative to it, as in params.yaml
        loaded = load_params(target, root=Path.cwd())
    except ParamsError as error:
        sys.exit(f"error: {error}")
    print(f"{target} is valid: {len(loaded.activations())} activations x {len(loaded.evaluate.networks)} networks "
          f"x {len(loaded.evaluate.seeds)} seeds, {len(loaded.search.names())} searches")
