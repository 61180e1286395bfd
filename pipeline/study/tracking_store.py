"""The MLflow tracking store: which one, whether it can be written, and safe concurrent access to it.

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

Run logging (one MLflow run per stage) is in `pipeline.study.tracking`.
"""
from __future__ import annotations

import logging
import os
import random
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

DB_FILE_NAME = "mlflow.db"
ARTIFACT_DIR_NAME = "mlartifacts"
HEALTH_TIMEOUT_S = 3.0
HTTP_ENV_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
_RETRY_ATTEMPTS = 12  # backoff 0.05 s doubling to a 5 s cap: ~40 s of waiting in all, on top of busy_timeout
_TRANSIENT_MARKERS = ("database is locked", "database table is locked", "busy", "temporarily_unavailable")
# A tracking server away for a while (restarted, its machine rebooting, a network blip): MLflow's own HTTP retries
# (HTTP_ENV_DEFAULTS) give up within seconds, so the call is retried here, for up to OUTAGE_ENV seconds (default
# 300), with a warning per retry, before the stage fails.
OUTAGE_ENV = "ACTSEARCH_MLFLOW_OUTAGE_S"
_OUTAGE_DEFAULT_S = 300.0
_UNREACHABLE_MARKERS = ("max retries exceeded", "connection refused", "connectionerror", "connection aborted",
                        "connection reset", "remotedisconnected", "failed to establish a new connection",
                        "read timed out", "bad gateway", "service unavailable", "gateway timeout",
                        "too many 502 error responses", "too many 503 error responses", "too many 504 error responses")

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
    path = sqlite_path(uri)
    if path is None or path.is_absolute() or str(path) == ":memory:":
        return uri
    query = uri.partition("?")[2]
    return "sqlite:///" + (workspace_root(project_root) / path).as_posix() + (f"?{query}" if query else "")


def sqlite_path(uri: str) -> Path | None:
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
    path = sqlite_path(uri)
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


def _is_unreachable(err: BaseException) -> bool:
    text = f"{type(err).__name__} {err}".lower()
    return any(marker in text for marker in _UNREACHABLE_MARKERS)


def _one_line(err: BaseException, keep: int = 160) -> str:
    """The error's start (which request) and end (its cause, e.g. Connection refused) on one line."""
    text = " ".join(str(err).split())
    return text if len(text) <= 2 * keep else f"{text[:keep]} ... {text[-keep:]}"


def _outage_budget_s() -> float:
    try:
        return max(0.0, float(os.environ.get(OUTAGE_ENV, _OUTAGE_DEFAULT_S)))
    except ValueError:
        return _OUTAGE_DEFAULT_S


def retry_when_busy(call, *args, **kwargs):
    """Run an MLflow call, retrying while the store reports it is locked or busy, or while its server is
    unreachable (bounded by OUTAGE_ENV seconds, each retry logged)."""
    delay, outage_delay, busy_attempts, outage_since = 0.05, 1.0, 0, None
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as err:  # MlflowException wraps sqlalchemy's and requests' errors; match on the text
            if _is_unreachable(err):
                outage_since = time.monotonic() if outage_since is None else outage_since
                waited, budget = time.monotonic() - outage_since, _outage_budget_s()
                if waited + outage_delay > budget:
                    raise
                _log.warning("MLflow tracking server unreachable (%s); retrying in %.0f s (%.0f of %.0f s waited)",
                             _one_line(err), outage_delay, waited, budget)
                time.sleep(outage_delay)
                outage_delay = min(outage_delay * 2, 30.0)
                continue
            busy_attempts += 1
            if busy_attempts == _RETRY_ATTEMPTS or not _is_transient(err):
                raise
            _log.debug("MLflow store busy (%s), retry %d in %.2f s", err, busy_attempts, delay)
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 5.0)


@contextmanager
def store_init_lock(uri: str):
    """Serialize the first touch (creation and migrations) of one SQLite file across processes."""
    path = sqlite_path(uri)
    if path is None or fcntl is None or not path.is_absolute():  # fcntl is None off POSIX: retries alone
        yield
        return
    with open(f"{path}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield

