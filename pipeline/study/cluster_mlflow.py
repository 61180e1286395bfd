"""One `mlflow server` in front of the study's store, for stages that run on several machines.

Many processes on several machines must not write one SQLite file (its locks do not hold over NFS), so the Ray
runner starts one server on the driver's node in front of the store and hands its URI to the tasks as
MLFLOW_TRACKING_URI; artifacts go through the server into `mlartifacts/` beside the database, as with the
SQLite store. The server takes tens of seconds before /health answers: it is polled, with a deadline.
"""
from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pipeline.study.tracking_store import ARTIFACT_DIR_NAME, sqlite_path

STARTUP_TIMEOUT_S = 180.0


def wait_healthy(uri: str, server: subprocess.Popen, log: Path, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"error: mlflow server exited with status {server.returncode} at start; see {log}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"error: mlflow server at {uri} did not answer /health within {timeout_s:.0f} s; see {log}")


@contextmanager
def mlflow_server(store_uri: str, host: str, port: int, log: Path) -> Iterator[str]:
    """Serve the SQLite store `store_uri` on host:port while the block runs; yields the server's URI."""
    database = sqlite_path(store_uri)
    artifacts = (database.parent if database else Path.cwd()) / ARTIFACT_DIR_NAME
    log.parent.mkdir(parents=True, exist_ok=True)
    uri = f"http://{host}:{port}"
    with log.open("a") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store_uri, "--artifacts-destination",
             str(artifacts), "--host", host, "--port", str(port), "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_healthy(uri, server, log)
        yield uri
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
