"""MLflow tracking for DVC stages: one MLflow run per executed stage instance.

Store, first match wins: env MLFLOW_TRACKING_URI > the `tracking_uri` param > `mlflow.db` (SQLite) at the project
root by ABSOLUTE path. `dvc exp run --temp`/`--queue` runs stages in a copy at `<root>/.dvc/tmp/exps/tmpXXX`, so
the root is mapped back to the workspace and all runs land in one store. Relative `sqlite:///` paths are
anchored at that root too. SQLite experiments keep artifacts in `mlartifacts/` beside the
database (MLflow's default, `./mlruns`, would land in, and vanish with, the temporary copy).

Concurrency (`dvc queue start -j N`, one SQLite file): MLflow 3 sets `PRAGMA busy_timeout = 20000` per session,
so writers wait for each other, but processes creating a fresh database race on its migrations. So the first
touch of an SQLite store holds a file lock (`<db>.lock`); every MLflow call is retried with backoff and jitter
while the error says locked/busy/TEMPORARILY_UNAVAILABLE; each `log_metrics` is one `log_batch`. HTTP stores:
`check_tracking` probes `/health` with a short timeout before training, and MLflow's own retry loop (minutes by
default) is shortened via MLFLOW_HTTP_REQUEST_MAX_RETRIES / _TIMEOUT unless already set.

The parent-run id travels in env ACTSEARCH_PARENT_RUN_ID, never as a DVC dependency (it changes every session).
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

PARENT_RUN_ENV = "ACTSEARCH_PARENT_RUN_ID"
DB_FILE_NAME = "mlflow.db"
ARTIFACT_DIR_NAME = "mlartifacts"
STATUSES = ("ok", "diverged", "failed_to_learn", "failed")
HEALTH_TIMEOUT_S = 3.0
_HTTP_ENV_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
_RETRY_ATTEMPTS = 12  # backoff 0.05 s doubling to a 5 s cap: ~40 s of waiting in all, on top of busy_timeout
_TRANSIENT_MARKERS = ("database is locked", "database table is locked", "busy", "temporarily_unavailable")
_BATCH = 100  # MLflow accepts at most 100 params or tags per log_batch (and 1000 metrics)
_MAX_PARAM_LENGTH = 6000

_log = logging.getLogger(__name__)


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be used; the message says which one and how to fix it."""


def workspace_root(project_root: Path) -> Path:
    """The user's workspace, also when DVC runs an experiment in a temporary copy `<root>/.dvc/tmp/exps/tmpXXX`."""
    parts = Path(project_root).resolve().parts
    for i in range(len(parts) - 3, 0, -1):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return Path(*parts)


def default_tracking_uri(project_root: Path) -> str:
    return "sqlite:///" + (workspace_root(project_root) / DB_FILE_NAME).as_posix()


def resolve_tracking_uri(project_root: Path, configured: str | None) -> str:
    """Env MLFLOW_TRACKING_URI > `configured` (the param) > the project's SQLite database."""
    for candidate in (os.environ.get("MLFLOW_TRACKING_URI"), configured):
        if candidate and candidate.strip():
            return _absolute_sqlite(candidate.strip(), Path(project_root))
    return default_tracking_uri(project_root)


def _absolute_sqlite(uri: str, project_root: Path) -> str:
    path = _sqlite_path(uri)
    if path is None or path.is_absolute() or str(path) == ":memory:":
        return uri
    query = uri.partition("?")[2]
    return "sqlite:///" + (workspace_root(project_root) / path).as_posix() + (f"?{query}" if query else "")


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].partition("?")[0])


def check_tracking(uri: str) -> None:
    """Raise TrackingError within a few seconds if runs cannot be written to `uri`."""
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        _check_http(uri)
    elif scheme == "sqlite":
        _check_sqlite(uri)


def _check_http(uri: str) -> None:
    health = uri.rstrip("/") + "/health"
    fix = ("Start the tracking server (e.g. `mlflow server --backend-store-uri sqlite:///mlflow.db --port ...`), "
           "or unset MLFLOW_TRACKING_URI to log to the project's local SQLite store.")
    try:
        with urllib.request.urlopen(health, timeout=HEALTH_TIMEOUT_S):
            return  # urlopen raises HTTPError for any status >= 400
    except urllib.error.HTTPError as err:
        problem = f"answered HTTP {err.code} on {health}: is it an MLflow tracking server?"
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        problem = f"is unreachable ({reason}; no answer from {health} within {HEALTH_TIMEOUT_S:.0f} s)"
    raise TrackingError(f"MLflow tracking server {uri} {problem}. {fix}")


def _check_sqlite(uri: str) -> None:
    path = _sqlite_path(uri)
    if path is None or str(path) in ("", ":memory:"):
        return
    directory = path.parent
    fix = ("Make it writable, set `tracking_uri` in params.yaml to another location, "
           "or set MLFLOW_TRACKING_URI to a tracking server.")
    if not directory.is_dir():
        raise TrackingError(f"MLflow SQLite store {uri}: directory {directory} does not exist. {fix}")
    try:  # a real write, not os.access: also catches read-only mounts (SQLite writes a journal next to the db)
        tempfile.TemporaryFile(dir=directory).close()
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(f"{path} is read-only")
    except OSError as err:
        raise TrackingError(f"MLflow SQLite store {uri} is not writable ({err}). {fix}") from None


def _is_transient(err: BaseException) -> bool:
    text = f"{type(err).__name__} {err} {getattr(err, 'error_code', '')}".lower()
    return any(marker in text for marker in _TRANSIENT_MARKERS)


def _retry(call, *args, **kwargs):
    """Run an MLflow call, retrying while the store reports it is locked or busy."""
    delay = 0.05
    for attempt in range(_RETRY_ATTEMPTS):
        try:
            return call(*args, **kwargs)
        except Exception as err:  # MlflowException wraps sqlalchemy's OperationalError; match on the text
            if attempt == _RETRY_ATTEMPTS - 1 or not _is_transient(err):
                raise
            _log.debug("MLflow store busy (%s), retry %d in %.2f s", err, attempt + 1, delay)
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 5.0)


@contextmanager
def _store_init_lock(uri: str):
    """Serialize the first touch (creation and migrations) of one SQLite file across processes."""
    path = _sqlite_path(uri)
    if path is None or fcntl is None or not path.is_absolute():  # fcntl is None off POSIX: retries alone
        yield
        return
    with open(f"{path}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


def flatten(data: dict, prefix: str = "") -> dict[str, object]:
    """{"w": {"u1": {"relu": .3}}} -> {"w.u1.relu": .3}"""
    flat: dict[str, object] = {}
    for key, value in data.items():
        flat.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


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
            for name, value in _HTTP_ENV_DEFAULTS.items():
                os.environ.setdefault(name, value)  # MLflow reads these per request
        from mlflow import MlflowClient
        try:
            with _store_init_lock(self.tracking_uri):  # creating the client creates (migrates) the store
                self._client = _retry(MlflowClient, tracking_uri=self.tracking_uri)
                experiment_id = self._experiment_id()
        except Exception as err:  # a corrupt or outdated database, a server refusing us, ...
            raise TrackingError(f"cannot use MLflow store {self.tracking_uri} for experiment "
                                f"{self.experiment!r}: {err}") from err
        commit, dirty = git_state(self._root)
        tags = {"stage": self.stage, "git_commit": commit, "mlflow.source.git.commit": commit,
                "git_dirty": "unknown" if dirty is None else dirty, **self._tags}
        parent = os.environ.get(PARENT_RUN_ENV, "").strip()
        if parent:
            tags["mlflow.parentRunId"] = parent
        run = _retry(self._client.create_run, experiment_id, run_name=self.stage, tags=self._clean_tags(tags))
        self.run_id = run.info.run_id
        self.log_params(self._params)
        return self

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException
        found = _retry(self._client.get_experiment_by_name, self.experiment)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                _retry(self._client.restore_experiment, found.experiment_id)
            return found.experiment_id
        try:
            return _retry(self._client.create_experiment, self.experiment, artifact_location=self._artifact_root())
        except MlflowException as err:
            if "RESOURCE_ALREADY_EXISTS" not in str(err.error_code):
                raise
            return _retry(self._client.get_experiment_by_name, self.experiment).experiment_id  # lost a race

    def _artifact_root(self) -> str | None:
        path = _sqlite_path(self.tracking_uri)
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
            _retry(self._client.set_terminated, self.run_id, status=status)
        except Exception:
            if exc_type is None:
                raise
            _log.exception("could not mark MLflow run %s as %s", self.run_id, status)  # keep the stage's error
        return False

    def _log_batch(self, kind: str, entries: list, size: int) -> None:
        for start in range(0, len(entries), size):
            _retry(self._client.log_batch, self.run_id, **{kind: entries[start:start + size]})

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
            _retry(self._client.log_artifacts, self.run_id, str(path), artifact_path or path.name)
        elif path.is_file():
            _retry(self._client.log_artifact, self.run_id, str(path), artifact_path)
        else:
            raise FileNotFoundError(f"cannot log artifact {path}: no such file or directory")

    def log_dict(self, data: dict, name: str) -> None:
        if self._active():
            _retry(self._client.log_dict, self.run_id, data, name)  # JSON, or YAML if name ends in .yaml

    def log_text(self, text: str, name: str) -> None:
        if self._active():
            _retry(self._client.log_text, self.run_id, text, name)

    def log_model_weights(self, state_dict_path: Path) -> None:
        if self._active():
            if not Path(state_dict_path).is_file():
                raise FileNotFoundError(f"cannot log weights {state_dict_path}: no such file")
            self.log_artifact(state_dict_path, "weights")
