"""Tracking credentials for the Ray runner's tasks, never in a task's arguments.

A Ray task's arguments are stored by Ray and shown by its tools (state API, dashboard) to whoever reaches the
cluster. So the runner's tasks get no password in their environment dict: the driver writes the credentials
(those of the runner's own MLflow server, or MLFLOW_TRACKING_PASSWORD/TOKEN from the driver's environment) to a
file readable by this user only, in DVC's scratch folder of the project (which every node mounts), and the tasks
get its path. The stage's process reads it into its environment (MLflow reads MLFLOW_TRACKING_USERNAME/PASSWORD
per request); the driver deletes it at the end of the run.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

SECRETS_FILE_ENV = "ACTSEARCH_SECRETS_FILE"
SECRETS_DIR = Path(".dvc") / "tmp" / "cluster"  # DVC's scratch folder: git-ignored by DVC
_SECRET_WORDS = ("PASSWORD", "TOKEN", "SECRET")
_USER_NAMES = ("MLFLOW_TRACKING_USERNAME",)  # travels with its password


def is_secret(name: str) -> bool:
    return name in _USER_NAMES or any(word in name.upper() for word in _SECRET_WORDS)


def without_secrets(env: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in env.items() if not is_secret(key)}


def secrets_of(env: dict[str, str], prefixes: tuple[str, ...]) -> dict[str, str]:
    """The secrets among the variables the runner forwards (e.g. MLFLOW_TRACKING_PASSWORD)."""
    return {key: value for key, value in env.items() if key.startswith(prefixes) and is_secret(key)}


def write_secrets(root: Path, secrets: dict[str, str]) -> Path:
    """A new file of `secrets`, created readable and writable by this user only (never a moment wider)."""
    folder = Path(root) / SECRETS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"secrets-{uuid.uuid4().hex}.json"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        json.dump(secrets, out)
    return path


def read_secrets(env: dict[str, str]) -> dict[str, str]:
    """In a task: the secrets whose file the driver named in `env` (none if it named none)."""
    path = env.get(SECRETS_FILE_ENV)
    if not path:
        return {}
    return json.loads(Path(path).read_text())
