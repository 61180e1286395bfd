"""Plumbing shared by the stage scripts: project paths, params, prepared data, loaders, MLflow runs, user errors.

Stages run as modules from the project root (`python -m stages.search ...`, as dvc.yaml does), so `pipeline`
imports without installing the project. Every path is anchored at the project root that holds this folder.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from pathlib import Path
from typing import Callable

import torch

from pipeline.data.augment import BatchLoader
from pipeline.training.checkpoint import CheckpointError, hash_files
from pipeline.study.config import Params, ParamsError, load_params, search_stage_suffix, searched_name
from pipeline.data.cifar import DataError
from pipeline.study.preflight import PreflightError, check_free_space
from pipeline.study.records import flatten
from pipeline.study.stage_checkpoints import checkpoint_file
from pipeline.study.tracking import StageRun
from pipeline.study.tracking_store import TrackingError, check_tracking

ROOT = Path(__file__).resolve().parents[1]
RAW_DATA = ROOT / "data" / "raw"  # the download stage's output: one archive or folder, read by prepare
PREPARED_DATA = ROOT / "data" / "prepared" / "cifar10.pt"
SEARCH_SPLIT = ROOT / "data" / "prepared" / "search_split.pt"
RESULTS = ROOT / "results"
# Resume state lives outside the DVC outputs: DVC deletes a stage's declared outputs before running it.
CHECKPOINTS = ROOT / "checkpoints"
USER_ERRORS = (ParamsError, DataError, TrackingError, CheckpointError, PreflightError)

log = logging.getLogger("stages")


def run(main: Callable[[list[str]], None], *stage_errors: type[Exception]) -> None:
    """Run a stage's main; a user error (params, data, store, missing input, or one of the stage's own
    `stage_errors`) ends it with one line, no traceback. A stage names its own errors so that this module imports
    no computing code, which would make it a dependency of every stage (dvc.yaml)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        main(sys.argv[1:])
    except (*USER_ERRORS, *stage_errors) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def study_params(check_paths: bool = True) -> Params:
    """The project's params.yaml, validated (for the stages, and for the benchmarks that rerun parts of the study)."""
    return load_params(ROOT / "params.yaml", check_paths=check_paths)


def start(stage: str) -> Params:
    """Validate params.yaml (all of it), the free disk space and the MLflow store before the stage does any work."""
    params = study_params()
    check_free_space(ROOT, params.preflight.min_free_mb)
    if params.study.mlflow:
        check_tracking(params.tracking_uri())
    log.info("stage %s (params.yaml valid)", stage)
    return params


def searched_stage(kind: str, description: str, argv: list[str]) -> tuple[argparse.Namespace, str, str, Params]:
    """The command line of a per-search stage (`search`, `discretize`): (args, the searched activation's name,
    e.g. darts-simple-s0, the DVC stage name, e.g. search@darts-simple-0, the checked params)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--optimizer", required=True)
    parser.add_argument("--space", required=True)
    parser.add_argument("--seed", required=True, type=int, help="the search seed (one of search.seeds)")
    args = parser.parse_args(argv)
    stage = f"{kind}@{search_stage_suffix(args.optimizer, args.space, args.seed)}"
    return args, searched_name(args.optimizer, args.space, args.seed), stage, start(stage)


def stage_run(params: Params, stage: str, tags: dict, run_params: dict | None = None) -> StageRun:
    return StageRun(stage, experiment=params.study.experiment, tracking_uri=params.tracking_uri(), tags=tags,
                    params=run_params, enabled=params.study.mlflow, project_root=ROOT)


def _load(path: Path, what: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{what} {path} is missing; run the prepare stage first (dvc repro)") from None
    except Exception as error:
        raise DataError(f"cannot read {what} {path} ({type(error).__name__}: {error}); delete it and rerun "
                        f"`dvc repro prepare`") from None


def load_prepared() -> dict:
    """{train_images, train_labels, test_images, test_labels (uint8 / int64 tensors), classes}."""
    return _load(PREPARED_DATA, "the prepared data")


def search_loaders(batch_size: int, seed: int, device: torch.device, drop_last: bool = True,
                   augment_arch: bool = True) -> tuple[BatchLoader, BatchLoader]:
    """Loaders over the two disjoint search splits: network weights and architecture, both augmented with the
    training transform (crop + flip) as DARTS, DrNAS and GRAFS feed their architecture step.

    Training drops the last partial batch (BatchNorm needs more than one sample); a measurement (the
    discretization gap) passes drop_last=False and augment_arch=False to see every image as it is."""
    data, split = load_prepared(), _load(SEARCH_SPLIT, "the search split")
    images, labels = data["train_images"], data["train_labels"]
    weights, arch = split["weights"], split["arch"]
    train = BatchLoader(images[weights], labels[weights], batch_size, shuffle=True, augment=True, drop_last=True,
                        device=device, seed=seed)
    val = BatchLoader(images[arch], labels[arch], batch_size, shuffle=True, augment=augment_arch, drop_last=drop_last,
                      device=device, seed=seed + 1)
    return train, val


def checkpoint_path(stage: str) -> Path:
    return checkpoint_file(ROOT, stage)  # the Ray runner finds it by the same rule


def stage_inputs(stage: str, item: dict, root: Path = ROOT) -> dict[str, str]:
    """Hashes of every dependency dvc.yaml lists for `stage` (its data and its code), with `${item.<key>}` filled
    from `item`: what a checkpoint must have been computed from to be resumed (pipeline.training.checkpoint)."""
    import yaml

    deps = yaml.safe_load((root / "dvc.yaml").read_text())["stages"][stage]["deps"]

    def fill(dep: str) -> str:
        filled = re.sub(r"\$\{item\.(\w+)\}", lambda m: str(item[m.group(1)]), dep)
        if "${" in filled:
            raise ValueError(f"dvc.yaml: stage {stage} dependency {dep!r} has a value this stage does not fill")
        return filled
    return hash_files(root, [fill(dep) for dep in deps])


def resume_or_restart(work: Callable[[Path], object], checkpoint: Path):
    """Run `work(checkpoint)`; a checkpoint left by a killed run with other settings is stale: drop it, restart."""
    try:
        return work(checkpoint)
    except CheckpointError as error:
        if not checkpoint.exists():
            raise
        log.warning("discarding checkpoint %s and starting over: %s", checkpoint, error)
        checkpoint.unlink()
        return work(checkpoint)


def plain(value):
    """JSON-safe copy: non-finite floats become null, tuples become lists."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plain(data), indent=2) + "\n")


def write_csv(path: Path, records: list[dict]) -> None:
    """One row per record; nested dicts become dotted columns (operator_weights.u1.relu)."""
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([flatten(record) for record in records]).to_csv(path, index=False)
