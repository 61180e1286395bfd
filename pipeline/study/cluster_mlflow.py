"""One `mlflow server` in front of the study's store, for stages that run on several machines.

Many processes on several machines must not write one SQLite file (its locks do not hold over NFS), so the Ray
runner starts one server on the driver's node in front of the store and hands its URI to the tasks as
MLFLOW_TRACKING_URI; artifacts go through the server into `mlartifacts/` beside the database, as with the
SQLite store. The server takes tens of seconds before /health answers: it is polled, with a deadline.

Who may talk to it: MLflow models here are pickles, run by whoever loads them, so a server that anyone on the
network can write to is a way to run code on the user's machine. On one node the server binds 127.0.0.1. On
several nodes it must listen on the network, so it runs MLflow's basic-auth app with a user and password
generated for this run (`Credentials`), which reach the tasks through `cluster_secrets`, never in a task's
arguments. (MLflow's `--allowed-hosts` only checks the Host header against DNS rebinding: no access control.)

The server is its own process group (uvicorn and MLflow's job consumers are children of `mlflow server`, and
outlive it when only it is stopped), and the whole group is stopped at the end.
"""
from __future__ import annotations

import ctypes
import ipaddress
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pipeline.study.tracking_store import ARTIFACT_DIR_NAME, sqlite_path

STARTUP_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    @classmethod
    def generate(cls) -> Credentials:
        return cls("actsearch-runner", secrets.token_urlsafe(32))

    def as_env(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_USERNAME": self.username, "MLFLOW_TRACKING_PASSWORD": self.password}


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def server_host(requested: str | None, multi_node: bool, driver_ip: str) -> str:
    """Where the server listens: as asked, else 127.0.0.1 on one node and the driver's address on several."""
    return requested or (driver_ip if multi_node else LOOPBACK)


def wait_healthy(uri: str, server: subprocess.Popen, log: Path, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"error: mlflow server exited with status {server.returncode} at start; see {log}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:  # /health needs no credentials
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"error: mlflow server at {uri} did not answer /health within {timeout_s:.0f} s; see {log}")


def _auth_config(folder: Path, credentials: Credentials) -> Path:
    """MLflow's basic-auth settings: the run's user as admin, nobody else allowed anything."""
    config = folder / "basic_auth.ini"
    descriptor = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(f"[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                  f"database_uri = sqlite:///{(folder / 'basic_auth.db').as_posix()}\n"
                  f"admin_username = {credentials.username}\nadmin_password = {credentials.password}\n"
                  f"authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    return config


def stop_process_group(server: subprocess.Popen, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM to the server's whole process group, SIGKILL to what is left after `timeout_s`."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(server.pid, signum)
        except ProcessLookupError:
            break  # the group is empty
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _group_alive(server.pid):
            server.poll()  # reaps the leader, so that it does not count as alive
            time.sleep(0.2)
        if not _group_alive(server.pid):
            break
    server.wait()


def _stop_with_runner() -> None:
    """In the server's process: SIGTERM when the runner dies, even by SIGKILL (its own session spares it the
    terminal's signals, so nothing else would stop it)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except ProcessLookupError:
        return False


@contextmanager
def mlflow_server(store_uri: str, host: str, port: int, log: Path,
                  credentials: Credentials | None = None) -> Iterator[str]:
    """Serve the store `store_uri` on host:port while the block runs, with basic auth if `credentials`; yields the
    server's URI."""
    database = sqlite_path(store_uri)
    artifacts = (database.parent if database else Path.cwd()) / ARTIFACT_DIR_NAME
    log.parent.mkdir(parents=True, exist_ok=True)
    uri = f"http://{host}:{port}"
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store_uri, "--artifacts-destination",
               str(artifacts), "--host", host, "--port", str(port), "--workers", "1"]
    with tempfile.TemporaryDirectory(prefix="actsearch-mlflow-auth-") as private:  # mode 0700, this machine only
        # MLflow's job runner (seven consumer processes) serves GenAI scorers and prompt optimization, which the
        # study never submits: off unless the user's environment says otherwise.
        env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"} | dict(os.environ)
        if credentials:
            command += ["--app-name", "basic-auth"]
            env |= {"MLFLOW_AUTH_CONFIG_PATH": str(_auth_config(Path(private), credentials)),
                    "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32)}  # the auth app's CSRF key
        with log.open("a") as out:
            server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                      start_new_session=True,  # its own group: stopped whole, spared Ctrl-C
                                      preexec_fn=_stop_with_runner)
            out.write(f"== mlflow server pid {server.pid} on {uri}{' with basic auth' if credentials else ''}\n")
        try:
            wait_healthy(uri, server, log)
            yield uri
        finally:
            stop_process_group(server)
