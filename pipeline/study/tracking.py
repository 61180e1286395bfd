"""MLflow run logging for DVC stages: one MLflow run per executed stage instance (`StageRun`).

Each `log_metrics` is one `log_batch`, and every MLflow call is retried while the store is busy; where runs go
and how concurrent stages share one store is `pipeline.study.tracking_store`'s part.

Every stage run is a child of one parent run per study: the runs of one `dvc repro` or `dvc exp run` (the same git
commit, the same params.yaml, the same DVC experiment name) nest under it in the MLflow UI, and the parent carries
the DVC experiment name (`dvc_exp_name`, also on every child). The Ray runner makes its own parent and passes its
id in env ACTSEARCH_PARENT_RUN_ID, never as a DVC dependency (it changes every session).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

from pipeline.study.records import flatten
from pipeline.study.tracking_store import (ARTIFACT_DIR_NAME, HTTP_ENV_DEFAULTS, TrackingError, check_tracking,
                                     retry_when_busy, sqlite_path, store_init_lock)

PARENT_RUN_ENV = "ACTSEARCH_PARENT_RUN_ID"
GROUP_TAG = "actsearch.study_group"  # on parent runs only: what identifies the study whose stage runs nest under it
# DVC sets these for the stages of `dvc exp run` (DVC_EXP_NAME only when the experiment was named with -n).
DVC_EXP_NAME_ENV, DVC_EXP_BASELINE_ENV = "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"
STATUSES = ("ok", "diverged", "failed_to_learn", "failed")
_BATCH = 100  # MLflow accepts at most 100 params or tags per log_batch (and 1000 metrics)
_MAX_PARAM_LENGTH = 6000
# Third-party packages that the modules a logged network's pickle names (pipeline/space, pipeline/kernels) import,
# besides torch; tests/test_model_requirements.py checks the list against their imports.
MODEL_IMPORTS = ("sympy",)

_log = logging.getLogger(__name__)


def _key(name: str) -> str:
    return re.sub(r"[^\w./\- ]", "_", name)  # MLflow rejects other characters in metric/param names


def _text(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value, default=str) if isinstance(value, (list, tuple)) else str(value)


def git_state(root: Path) -> tuple[str, bool | None]:
    """(commit, dirty) of the repository at `root`; ("unknown", None) outside a git repository."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    try:
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return "unknown", None


def dvc_experiment_name() -> str:
    """The DVC experiment a stage runs in: its name under `dvc exp run -n NAME`, "unnamed experiment" under an
    unnamed `dvc exp run` (DVC names it only after the run), "workspace" under `dvc repro`."""
    name = os.environ.get(DVC_EXP_NAME_ENV, "").strip()
    if name:
        return name
    return "unnamed experiment" if os.environ.get(DVC_EXP_BASELINE_ENV) else "workspace"


def study_group(root: Path, commit: str) -> dict[str, str]:
    """What the stage runs of one study share: the DVC experiment name, the git commit and params.yaml's MD5."""
    params = root / "params.yaml"
    digest = hashlib.md5(params.read_bytes()).hexdigest() if params.is_file() else "none"
    experiment = dvc_experiment_name()
    key = hashlib.md5(f"{experiment}|{commit}|{digest}".encode()).hexdigest()  # quote-free for the run filter
    return {GROUP_TAG: key, "dvc_exp_name": experiment, "git_commit": commit,
            "params_md5": digest, "mlflow.runName": f"{experiment} @ {commit[:7]}, params {digest[:8]}"}


class StageRun:
    """One MLflow run for one DVC stage instance; a context manager. enabled=False makes every method a no-op."""

    def __init__(self, stage: str, *, experiment: str, tracking_uri: str, tags: dict[str, object] | None = None,
                 params: dict | None = None, enabled: bool = True, project_root: Path | None = None):
        self.stage, self.experiment, self.tracking_uri, self.enabled = stage, experiment, tracking_uri, enabled
        self.run_id: str | None = None
        self._tags, self._params = dict(tags or {}), dict(params or {})
        self._root = Path(project_root) if project_root else Path.cwd()  # for the git commit
        self._status_set, self._nonfinite, self._client = False, set(), None

    def __enter__(self) -> StageRun:
        if not self.enabled:
            return self
        if not self.experiment or not self.experiment.strip():
            raise TrackingError("MLflow experiment name is empty; set the study name in params.yaml.")
        check_tracking(self.tracking_uri)
        if urlparse(self.tracking_uri).scheme in ("http", "https"):
            for name, value in HTTP_ENV_DEFAULTS.items():
                os.environ.setdefault(name, value)  # MLflow reads these per request
        from mlflow import MlflowClient
        try:
            with store_init_lock(self.tracking_uri):  # creating the client creates (migrates) the store
                self._client = retry_when_busy(MlflowClient, tracking_uri=self.tracking_uri)
                experiment_id = self._experiment_id()
        except Exception as err:  # a corrupt or outdated database, a server refusing us, ...
            raise TrackingError(f"cannot use MLflow store {self.tracking_uri} for experiment "
                                f"{self.experiment!r}: {err}") from err
        commit, dirty = git_state(self._root)
        tags = {"stage": self.stage, "git_commit": commit, "mlflow.source.git.commit": commit,
                "git_dirty": "unknown" if dirty is None else dirty, "dvc_exp_name": dvc_experiment_name(),
                **self._tags}
        parent = os.environ.get(PARENT_RUN_ENV, "").strip()
        tags["mlflow.parentRunId"] = parent or self._study_parent(experiment_id, commit)
        run = retry_when_busy(self._client.create_run, experiment_id, run_name=self.stage, tags=self._clean_tags(tags))
        self.run_id = run.info.run_id
        self.log_params(self._params)
        return self

    def _study_parent(self, experiment_id: str, commit: str) -> str:
        """The id of this study's parent run (study_group), made by the first stage that needs it. Under the store's
        lock, so concurrent stages on one SQLite file find one parent, not one each."""
        group = study_group(self._root, commit)
        query = f"tags.`{GROUP_TAG}` = '{group[GROUP_TAG]}'"
        with store_init_lock(self.tracking_uri):
            found = retry_when_busy(self._client.search_runs, [experiment_id], filter_string=query, max_results=1)
            if found:
                return found[0].info.run_id
            run = retry_when_busy(self._client.create_run, experiment_id, tags=self._clean_tags(group))
            # Finished at once: it holds no metrics of its own, and the UI nests children under a finished parent.
            retry_when_busy(self._client.set_terminated, run.info.run_id, status="FINISHED")
            return run.info.run_id

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException
        found = retry_when_busy(self._client.get_experiment_by_name, self.experiment)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                retry_when_busy(self._client.restore_experiment, found.experiment_id)
            return found.experiment_id
        try:
            return retry_when_busy(self._client.create_experiment, self.experiment,
                                   artifact_location=self._artifact_root())
        except MlflowException as err:
            if "RESOURCE_ALREADY_EXISTS" not in str(err.error_code):
                raise
            return retry_when_busy(self._client.get_experiment_by_name, self.experiment).experiment_id  # lost a race

    def _artifact_root(self) -> str | None:
        path = sqlite_path(self.tracking_uri)
        if path is None or not path.is_absolute():
            return None  # a server decides where artifacts go
        safe = re.sub(r"[^\w.-]", "_", self.experiment)
        return (path.parent / ARTIFACT_DIR_NAME / safe).as_uri()

    def _active(self) -> bool:
        if self.enabled and self.run_id is None:
            raise RuntimeError(f"StageRun {self.stage!r} logs only inside its `with` block")
        return self.enabled

    def __exit__(self, exc_type, exc, tb) -> bool:
        if not self.enabled or self.run_id is None:
            return False
        if exc_type is SystemExit and exc.code in (0, None):
            exc_type = None  # sys.exit() on success
        status = "FINISHED" if exc_type is None else "KILLED" if exc_type is KeyboardInterrupt else "FAILED"
        try:
            if exc_type is not None:
                self.set_tags({"status": "failed", "error": f"{exc_type.__name__}: {exc}"[:1000]})
            elif not self._status_set:
                self.set_tags({"status": "ok"})
            retry_when_busy(self._client.set_terminated, self.run_id, status=status)
        except Exception:
            if exc_type is None:
                raise
            _log.exception("could not mark MLflow run %s as %s", self.run_id, status)  # keep the stage's error
        return False

    def _log_batch(self, kind: str, entries: list, size: int) -> None:
        for start in range(0, len(entries), size):
            retry_when_busy(self._client.log_batch, self.run_id, **{kind: entries[start:start + size]})

    @staticmethod
    def _clean_tags(tags: dict) -> dict[str, str]:
        return {_key(str(k))[:250]: _text(v)[:8000] for k, v in flatten(tags).items() if v is not None}

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if not self._active() or not metrics:
            return
        from mlflow.entities import Metric
        stamp = int(time.time() * 1000)
        entries = []
        for name, value in flatten(metrics).items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise TypeError(f"metric {name!r} must be a number, got {value!r}") from None
            entries.append(Metric(_key(name), number, stamp, int(step or 0)))
        self._log_batch("metrics", entries, 1000)
        nonfinite = {m.key for m in entries if not math.isfinite(m.value)} - self._nonfinite
        if nonfinite:  # MLflow stores NaN and clamps inf; the tag makes such runs easy to find
            self._nonfinite |= nonfinite
            self.set_tags({"nonfinite_metrics": ",".join(sorted(self._nonfinite))})

    def log_params(self, params: dict) -> None:
        if not self._active() or not params:
            return
        from mlflow.entities import Param
        entries = [Param(_key(k)[:250], _text(v)[:_MAX_PARAM_LENGTH]) for k, v in flatten(params).items()]
        self._log_batch("params", entries, _BATCH)

    def set_tags(self, tags: dict) -> None:
        if not self._active() or not tags:
            return
        if "status" in tags:
            if tags["status"] not in STATUSES:
                raise ValueError(f"status tag must be one of {STATUSES}, got {tags['status']!r}")
            self._status_set = True
        from mlflow.entities import RunTag
        entries = [RunTag(k, v) for k, v in self._clean_tags(tags).items()]
        self._log_batch("tags", entries, _BATCH)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Log a file, or a directory under its own name (or under `artifact_path` if given)."""
        if not self._active():
            return
        path = Path(path)
        if path.is_dir():
            retry_when_busy(self._client.log_artifacts, self.run_id, str(path), artifact_path or path.name)
        elif path.is_file():
            retry_when_busy(self._client.log_artifact, self.run_id, str(path), artifact_path)
        else:
            raise FileNotFoundError(f"cannot log artifact {path}: no such file or directory")

    def log_dict(self, data: dict, name: str) -> None:
        if self._active():
            retry_when_busy(self._client.log_dict, self.run_id, data, name)  # JSON, or YAML if name ends in .yaml

    def log_text(self, text: str, name: str) -> None:
        if self._active():
            retry_when_busy(self._client.log_text, self.run_id, text, name)

    def log_model(self, model, name: str, input_example, code_paths: list[str],
                  requirements: str | list[str]) -> str | None:
        """Log a network as an MLflow model (`mlflow.pytorch.load_model(uri)` gives it back); returns its URI.

        The signature is inferred from `input_example`; `code_paths` (the `pipeline` package) travel with the
        model, so it loads outside this project; `requirements` (pip requirements, e.g. `model_requirements()`, or
        a requirements file) saves MLflow inferring them.
        The fluent API needs an active run: this run is resumed for the call (and marked finished in between;
        leaving the `with` block sets its final status as always).
        """
        if not self._active():
            return None
        import mlflow
        import mlflow.pytorch

        mlflow.set_tracking_uri(self.tracking_uri)
        with retry_when_busy(mlflow.start_run, run_id=self.run_id):
            info = retry_when_busy(mlflow.pytorch.log_model, model, name=name, input_example=input_example,
                                   code_paths=code_paths, pip_requirements=requirements,
                                   serialization_format="pickle")  # an nn.Module back, not a torch.export program
        return info.model_uri

    def register_model(self, model_uri: str, name: str, tags: dict) -> str | None:
        """Register a logged model in the MLflow Model Registry under `name`, with `tags`; returns its version."""
        if not self._active():
            return None
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        version = retry_when_busy(mlflow.register_model, model_uri, name, tags=self._clean_tags(tags))
        return version.version

    def log_model_weights(self, state_dict_path: Path) -> None:
        if self._active():
            if not Path(state_dict_path).is_file():
                raise FileNotFoundError(f"cannot log weights {state_dict_path}: no such file")
            self.log_artifact(state_dict_path, "weights")


def model_requirements() -> list[str]:
    """The pip requirements of a logged network: what loading it needs, not the project's whole requirements.txt
    (DVC, Ray, pytest). MLflow's PyTorch flavour needs torch and cloudpickle; the pickled classes' modules add
    `MODEL_IMPORTS`. Pinned to the installed versions."""
    from importlib.metadata import version

    import mlflow.pytorch

    return mlflow.pytorch.get_default_pip_requirements() + [f"{name}=={version(name)}" for name in MODEL_IMPORTS]
