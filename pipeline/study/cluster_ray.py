"""The Ray side of the runner (`pipeline.study.cluster`): a stage's command as a Ray task, the resources it asks
for, and the check that every node sees the project directory.

A task runs the stage's own `cmd` (from dvc.yaml, through the shell as DVC does) in the project directory, its
output appended to `logs/<stage>.log`. The command is a child process that dies with the task's worker (Linux
parent-death signal): when Ray's worker is killed, no orphan keeps writing the stage's outputs while Ray's retry
resumes the stage from its checkpoint. Exit status decides retries: a command killed by a signal (OOM killer,
a lost worker) is retried up to `cluster.max_retries` times; one that exits non-zero failed for good (the
stages are deterministic: a rerun fails the same way).
"""
from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.study.cluster_mlflow import is_loopback
from pipeline.study.cluster_secrets import read_secrets, without_secrets

LOG_DIR = "logs"
MARKER_DIR = Path(".dvc") / "tmp" / "cluster"  # DVC's own scratch folder: git-ignored by DVC
FORWARDED_ENV_PREFIXES = ("ACTSEARCH_", "MLFLOW_", "DVC_", "TORCHINDUCTOR_")  # driver env the stages read
_PR_SET_PDEATHSIG = 1
_SHELL_CONTROL = re.compile(r"[;&|()\n`]")  # command lists, pipelines, subshells: more than one process


class StageFailed(RuntimeError):
    """The stage's command exited non-zero: failed for good, not retried."""


class StageKilled(RuntimeError):
    """The stage's command was killed by a signal: Ray retries the task, which resumes from its checkpoint."""


def stage_kind(stage: str) -> str:
    """'evaluate-baseline@relu-resnet8-0' -> 'evaluate': the key of the stage's resources in cluster.yaml."""
    return stage.split("@")[0].split("-")[0]


def log_path(root: Path, stage: str) -> Path:
    return Path(root) / LOG_DIR / f"{stage}.log"


def unschedulable(options: dict[str, dict], nodes: list[dict[str, float]]) -> list[str]:
    """Stage kinds whose task no single node can hold (Ray would wait for such a node forever), as one message
    each; `options` per kind as `task_options` gives them, `nodes` each live node's Ray resources ("CPU", "GPU",
    custom names)."""
    problems = []
    for kind, wanted in options.items():
        needs = {"CPU": wanted["num_cpus"], "GPU": wanted["num_gpus"], **wanted["resources"]}
        needs = {name: amount for name, amount in needs.items() if amount > 0}
        if not any(all(node.get(name, 0) >= amount for name, amount in needs.items()) for node in nodes):
            largest = {name: max((node.get(name, 0) for node in nodes), default=0) for name in needs}
            problems.append(f"{kind} asks for {needs}, and the largest node has {largest}")
    return problems


def task_options(settings: dict, kind: str, cluster_has_gpus: bool) -> dict:
    """Ray task options for one stage kind; a cluster without GPUs runs everything on CPUs."""
    wanted = settings[kind]
    return {"num_cpus": wanted["num_cpus"], "num_gpus": wanted["num_gpus"] if cluster_has_gpus else 0,
            "resources": dict(wanted["resources"]), "max_retries": settings["max_retries"],
            "retry_exceptions": [StageKilled]}


def forwarded_env(extra: dict[str, str]) -> dict[str, str]:
    """The driver's settings for the stages (fused-kernel mode, MLflow, DVC), plus `extra` (the tracking URI).
    No secret: the env dict is a task argument, which Ray stores and shows (see `cluster_secrets`)."""
    forwarded = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)} | extra
    return without_secrets(forwarded)


def ray_auth_warning(node_addresses: list[str], token_auth: bool) -> str | None:
    """Ray runs any code for whoever reaches its ports: on several nodes, or one on a network address, without
    token auth, say so. (Ray 2.60 listens on all interfaces unless started on 127.0.0.1, docs/cluster.md.)"""
    if token_auth or (len(node_addresses) == 1 and all(is_loopback(a) for a in node_addresses)):
        return None
    where = (f"this Ray cluster has {len(node_addresses)} nodes" if len(node_addresses) > 1 else
             f"this Ray node listens on {node_addresses[0]}")
    return (f"warning: {where} and no token authentication: anyone who can reach its ports can run code on every "
            f"node. Restart it with RAY_AUTH_MODE=token (driver and nodes) and firewall its ports to the cluster's "
            f"machines; see docs/cluster.md, 'Security'")


def token_auth_enabled() -> bool:
    """Whether the connected cluster checks Ray's token (Ray 2.60 asks the raylet; RAY_AUTH_MODE otherwise)."""
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled
        return is_token_auth_enabled()
    except ImportError:
        return os.environ.get("RAY_AUTH_MODE", "").lower() == "token"


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _exec_form(cmd: str) -> str:
    """A simple command replaces the shell (`exec`), so the parent-death signal reaches the stage's process itself
    (a signal set in the shell is not inherited by its children); a pipeline or list keeps its shell."""
    return cmd if _SHELL_CONTROL.search(cmd) else f"exec {cmd}"


def run_command(stage: str, cmd: str, root: str, env: dict[str, str]) -> dict:
    """Run one stage's command on this node; returns where and how long it ran."""
    environment = os.environ | env
    environment |= read_secrets(environment)  # tracking credentials, from a file only this user can read
    # The interpreter Ray runs this worker with is the one the project was installed in (`python -m stages...`).
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
    log = log_path(Path(root), stage)
    log.parent.mkdir(exist_ok=True)
    node = ray.util.get_node_ip_address()
    start = time.time()
    with log.open("a") as out:
        out.write(f"== {stage} on {node}, node {ray.get_runtime_context().get_node_id()}, "
                  f"ray worker pid {os.getpid()}: {cmd}\n")
        out.flush()
        done = subprocess.run(_exec_form(cmd), shell=True, cwd=root, env=environment, stdout=out,
                              stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    if done.returncode < 0:
        raise StageKilled(f"stage {stage} was killed by signal {-done.returncode}; see {log}")
    if done.returncode > 0:
        raise StageFailed(f"stage {stage} exited with status {done.returncode}; see {log}")
    return {"stage": stage, "node": node, "seconds": time.time() - start}


run_stage_task = ray.remote(run_command)


def _probe(root: str, token: str) -> tuple[str, bool]:
    """On one node: read the driver's marker, then write this node's own; (node ip, saw the driver's marker)."""
    marker_dir = Path(root) / MARKER_DIR
    try:
        seen = (marker_dir / f"driver-{token}").read_text() == token
    except OSError:
        seen = False
    if seen:
        (marker_dir / f"node-{ray.get_runtime_context().get_node_id()}-{token}").write_text(token)
    return ray.util.get_node_ip_address(), seen


probe_task = ray.remote(num_cpus=0)(_probe)


def check_shared_filesystem(root: Path) -> None:
    """Every alive node reads the driver's marker and writes its own, which the driver reads back."""
    token = uuid.uuid4().hex
    marker_dir = Path(root) / MARKER_DIR
    marker_dir.mkdir(parents=True, exist_ok=True)
    (marker_dir / f"driver-{token}").write_text(token)
    try:
        nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
        probes = {node: probe_task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                  .remote(str(root), token) for node in nodes}
        for node, probe in probes.items():
            ip, seen = ray.get(probe, timeout=120)
            back = marker_dir / f"node-{node}-{token}"
            if not (seen and back.is_file() and back.read_text() == token):
                raise SystemExit(f"error: Ray node {ip} does not share the project directory {root} with this "
                                 f"machine (marker files not seen); multi-node runs need the project on a "
                                 f"filesystem every node mounts at the same path (NFS), see docs/cluster.md")
    finally:
        for marker in marker_dir.glob(f"*{token}"):
            marker.unlink(missing_ok=True)


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
