"""Run the DVC pipeline's independent stages in parallel on a Ray cluster, with the dvc.lock of `dvc repro`.

    ray start --head                                   # or a cluster; docs/cluster.md
    python -m pipeline.study.cluster repro [stage ...] --address auto

The graph, the commands and what is stale come from DVC itself (its Python API), never from a reading of
dvc.yaml here. A stage whose upstream stages are all finished is checked with DVC (`Stage.changed`, what
`dvc repro` checks at its turn); an unchanged one is skipped, a changed one has its outputs removed (as DVC
does) and its `cmd` submitted as a Ray task with its kind's resources (cluster.yaml). When the task ends
the driver, the only process that writes dvc.lock, records the stage as `dvc commit --force <stage>` does. So
the outputs, the dvc.lock entries and `dvc status` are those of a serial `dvc repro`; only the order of the
entries in dvc.lock follows the order in which stages finished (DVC reads it as a mapping).

The runner holds DVC's repo lock for the whole run (`cluster_dvc`): a `dvc repro` or a second runner started
meanwhile stops with one line. A stage that fails for good, or whose `dvc commit` fails, blocks its dependents
while independent stages finish; the runner then exits 1 naming each such stage and its log (`logs/<stage>.log`).
A stage's checkpoint is deleted only once the stage is committed. Ctrl-C, SIGTERM and SIGHUP cancel the running
tasks, commit nothing unfinished and exit 128 + the signal (`cluster_signals`): dvc.lock holds exactly the stages
that finished.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import ray

from pipeline.study.cluster_dvc import LockedProject, locked_project
from pipeline.study.cluster_mlflow import Credentials, is_loopback, mlflow_server, server_host
from pipeline.study.cluster_plan import StagePlan
from pipeline.study.cluster_ray import (FORWARDED_ENV_PREFIXES, check_shared_filesystem, forwarded_env, free_port,
                                        log_path, ray_auth_warning, run_stage_task, stage_kind, task_options,
                                        token_auth_enabled, unschedulable)
from pipeline.study.cluster_secrets import SECRETS_FILE_ENV, secrets_of, write_secrets
from pipeline.study.cluster_settings import CLUSTER_FILE, ClusterError, load_cluster_settings
from pipeline.study.cluster_signals import Interrupt
from pipeline.study.config import ParamsError, load_params
from pipeline.study.stage_checkpoints import KEEP_CHECKPOINT_ENV, checkpoint_file

POLL_S = 1.0  # how often the driver looks up from ray.wait to notice a stop signal


def run_plan(project: LockedProject, plan: StagePlan, cmds: dict[str, str], options: dict[str, dict],
             env: dict[str, str], interrupt: Interrupt) -> int:
    """Run the stale stages of `plan`; returns the exit status (0; 1 when a stage failed; 128 + signal if stopped)."""
    root = Path(project.repo.root_dir)
    running: dict[ray.ObjectRef, str] = {}
    problems: list[str] = []

    def failed(name: str, what: str) -> None:
        blocked = plan.fail(name)
        problems.append(f"stage '{name}' {what}; its log: {log_path(root, name).relative_to(root)}"
                        + (f"; not run: {', '.join(sorted(blocked))}" if blocked else ""))
        print(f"error: {problems[-1]}", flush=True)

    while True:
        while not interrupt.requested and (ready := plan.ready()):
            for name in ready:
                if not project.prepare_if_changed(name):
                    print(f"Stage '{name}' didn't change, skipping", flush=True)
                    plan.finish(name)
                    continue
                print(f"Running stage '{name}' on the cluster (log: {log_path(root, name).relative_to(root)})",
                      flush=True)
                task = run_stage_task.options(**options[name]).remote(name, cmds[name], str(root), env)
                running[task] = name
                plan.start(name)
        if not running:
            break
        finished, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
        for task in finished:
            name = running.pop(task)
            try:
                info = ray.get(task)
            except ray.exceptions.RayError as err:
                failed(name, f"failed ({type(err).__name__})")
                continue
            try:
                project.commit(name)
            except Exception as err:  # a full cache disk, an output the command did not write: this stage only
                failed(name, f"ran, but `dvc commit` failed ({type(err).__name__}: {err}); its checkpoint is kept, "
                             f"a rerun resumes it")
                continue
            checkpoint_file(root, name).unlink(missing_ok=True)  # committed: nothing left to resume
            plan.finish(name)
            print(f"Stage '{name}' done on {info['node']} in {info['seconds']:.1f} s, committed", flush=True)
        if interrupt.requested and running:
            return _cancel(running, interrupt)
    if interrupt.requested:
        return interrupt.exit_status()
    if problems:
        print("error: " + " | ".join(problems), file=sys.stderr)
        return 1
    return 0


def _cancel(running: dict, interrupt: Interrupt) -> int:
    for task in running:
        ray.cancel(task, force=True)  # kills the worker; the stage's command dies with it
    ray.wait(list(running), num_returns=len(running), timeout=60)
    print(f"interrupted: not committed (rerun to redo them): {', '.join(sorted(running.values()))}",
          file=sys.stderr)
    return interrupt.exit_status()


def tracking_env(args, params, multi_node: bool, stack: ExitStack, root: Path) -> tuple[dict[str, str], dict]:
    """(MLFLOW_TRACKING_URI for the tasks: given, served by one `mlflow server`, or the params' store as is;
    the secrets they need to use it)."""
    if not params.study.mlflow:
        return {}, {}
    driver_secrets = secrets_of(dict(os.environ), FORWARDED_ENV_PREFIXES)  # e.g. for a --tracking-uri server
    if args.tracking_uri:
        return {"MLFLOW_TRACKING_URI": args.tracking_uri}, driver_secrets
    store = params.tracking_uri()
    serve = args.mlflow == "server" or (args.mlflow == "auto" and multi_node and store.startswith("sqlite:"))
    if not serve:
        return {"MLFLOW_TRACKING_URI": store}, driver_secrets
    host = server_host(args.mlflow_host, multi_node, _driver_node_ip() if multi_node else "")
    credentials = None if is_loopback(host) else Credentials.generate()  # reachable from the network: basic auth
    print(f"starting mlflow server on {host}{' with basic auth' if credentials else ''} in front of {store}",
          flush=True)
    uri = stack.enter_context(mlflow_server(store, host, args.mlflow_port or free_port(host),
                                            log_path(root, "mlflow-server"), credentials))
    return {"MLFLOW_TRACKING_URI": uri}, driver_secrets | (credentials.as_env() if credentials else {})


def _driver_node_ip() -> str:
    here = ray.get_runtime_context().get_node_id()
    return next(node["NodeManagerAddress"] for node in ray.nodes() if node["NodeID"] == here)


def repro(args) -> int:
    root = Path.cwd().resolve()
    try:
        params = load_params(root / "params.yaml")
        resources = load_cluster_settings(root / args.settings).model_dump()
    except (ParamsError, ClusterError) as error:
        raise SystemExit(f"error: {error}") from None
    with ExitStack() as stack:
        project = stack.enter_context(locked_project(root))  # held until the last commit: one writer at a time
        needs, cmds = project.graph(args.stages)
        kinds = {name: stage_kind(name) for name in needs}
        unknown = sorted({kind for kind in kinds.values() if kind not in resources})
        if unknown:
            raise SystemExit(f"error: {args.settings}: no resources for stage kind(s) {unknown}; add e.g. "
                             f"{unknown[0]}: {{num_cpus: 1, num_gpus: 0, resources: {{}}}}")
        if not project.stale(args.stages):
            print("Data and pipelines are up to date.", flush=True)  # no cluster, no MLflow server needed
            return 0
        ray.init(address=args.address, log_to_driver=False)
        stack.callback(ray.shutdown)
        nodes = [node for node in ray.nodes() if node["Alive"]]
        if warning := ray_auth_warning([node["NodeManagerAddress"] for node in nodes], token_auth_enabled()):
            print(warning, file=sys.stderr, flush=True)
        check_shared_filesystem(root)
        has_gpus = ray.cluster_resources().get("GPU", 0) > 0
        if not has_gpus:
            print("no GPUs in the cluster: every stage runs on CPUs (num_gpus ignored)", flush=True)
        options = {name: task_options(resources, kind, has_gpus) for name, kind in kinds.items()}
        problems = unschedulable({kind: task_options(resources, kind, has_gpus) for kind in set(kinds.values())},
                                 [node["Resources"] for node in nodes])
        if problems:  # Ray would queue these tasks forever
            raise SystemExit(f"error: {args.settings}: no node can run {'; '.join(sorted(problems))}; lower "
                             f"those resources or add a node that has them")
        uri, secrets = tracking_env(args, params, len(nodes) > 1, stack, root)
        env = forwarded_env(uri | {KEEP_CHECKPOINT_ENV: "1"})  # the runner deletes checkpoints after commits
        if secrets:
            secrets_file = write_secrets(root, secrets)
            stack.callback(secrets_file.unlink, missing_ok=True)
            env[SECRETS_FILE_ENV] = str(secrets_file)
        interrupt = Interrupt()
        started = time.monotonic()
        with interrupt.installed():
            status = run_plan(project, StagePlan(needs), cmds, options, env, interrupt)
        print(f"cluster repro: {time.monotonic() - started:.1f} s on {len(nodes)} node(s), exit status {status}",
              flush=True)
        return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.study.cluster", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("repro", help="reproduce the pipeline (or the given stages) on a Ray cluster")
    run.add_argument("stages", nargs="*", help="stage names as in `dvc repro` (default: the whole pipeline)")
    run.add_argument("--address", default="auto", help="Ray cluster: auto (a running `ray start`) or HOST:PORT")
    run.add_argument("--settings", default=CLUSTER_FILE, help="the stage kinds' Ray resources (default: %(default)s)")
    run.add_argument("--mlflow", choices=("auto", "server", "store"), default="auto",
                     help="server: start one `mlflow server` in front of the store; store: the store as is; "
                          "auto: a server when the cluster has several nodes and the store is SQLite")
    run.add_argument("--tracking-uri", help="an MLflow server already running (the tasks get this URI)")
    run.add_argument("--mlflow-host", help="address the started server binds to (default: 127.0.0.1 on one node, "
                                           "the driver node's address with basic auth on several)")
    run.add_argument("--mlflow-port", type=int, default=0, help="its port (default: a free one)")
    return repro(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
