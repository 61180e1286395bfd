"""Run the DVC pipeline's independent stages in parallel on a Ray cluster, with the dvc.lock of `dvc repro`.

    ray start --head                                   # or a cluster; docs/cluster.md
    python -m pipeline.study.cluster repro [stage ...] --address auto

The graph, the commands and what is stale come from DVC itself (its Python API), never from a reading of
dvc.yaml here. A stage whose upstream stages are all finished is checked with DVC (`Stage.changed`, what
`dvc repro` checks at its turn); an unchanged one is skipped, a changed one has its outputs removed (as DVC
does) and its `cmd` submitted as a Ray task with its kind's resources (params `cluster`). When the task ends
the driver, the only process that writes dvc.lock, records the stage as `dvc commit --force <stage>` does. So
the outputs, the dvc.lock entries and `dvc status` are those of a serial `dvc repro`; only the order of the
entries in dvc.lock follows the order in which stages finished (DVC reads it as a mapping).

A stage that fails for good blocks its dependents while independent stages finish; the runner then exits 1
naming each failed stage and its log (`logs/<stage>.log`). Ctrl-C cancels the running tasks, commits nothing
unfinished and exits 130: dvc.lock holds exactly the stages that finished.
"""
from __future__ import annotations

import argparse
import signal
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import ray
from dvc.repo import Repo

from pipeline.study.cluster_mlflow import mlflow_server
from pipeline.study.cluster_plan import StagePlan
from pipeline.study.cluster_ray import (check_shared_filesystem, forwarded_env, free_port, log_path, run_stage_task,
                                        stage_kind, task_options)
from pipeline.study.config import ParamsError, load_params

POLL_S = 1.0  # how often the driver looks up from ray.wait to notice Ctrl-C


def read_graph(root: Path, targets: list[str]) -> tuple[dict[str, set[str]], dict[str, str]]:
    """DVC's stage graph, restricted to the targets and what they depend on: (needs, stage -> cmd)."""
    with Repo(str(root)) as repo:
        graph = repo.index.graph  # an edge points from a stage to a stage whose output it uses
        chosen = set(graph.nodes)
        if targets:
            wanted = [stage for target in targets for stage in repo.stage.collect(target)]
            chosen = set().union(*(_downward(graph, stage) for stage in wanted))
        runnable = {stage for stage in chosen if stage.cmd}  # .dvc data sources have nothing to run
        needs = {stage.addressing: {dep.addressing for dep in graph.successors(stage) if dep in runnable}
                 for stage in runnable}
        return needs, {stage.addressing: stage.cmd for stage in runnable}


def _downward(graph, stage) -> set:
    found, frontier = {stage}, [stage]
    while frontier:
        for dep in graph.successors(frontier.pop()):
            if dep not in found:
                found.add(dep)
                frontier.append(dep)
    return found


def stale_stages(root: Path, targets: list[str]) -> dict:
    """`dvc status` of the targets and everything upstream of them: empty when nothing would run."""
    with Repo(str(root)) as repo:
        return repo.status(targets=targets or None, with_deps=True)


def prepare_if_changed(root: Path, name: str) -> bool:
    """True, with its outputs removed as `dvc repro` does before a run, if DVC finds the stage changed."""
    with Repo(str(root)) as repo, repo.lock:  # DVC's stage checks expect the repo lock held, as in `dvc repro`
        (stage,) = repo.stage.collect(name)
        if stage.frozen or not stage.changed():
            return False
        stage.remove_outs(ignore_remove=False, force=False)
        return True


def commit(root: Path, name: str) -> None:
    with Repo(str(root)) as repo:
        repo.commit(name, force=True)


class Interrupt:
    """Ctrl-C sets a flag the loop checks, so that no dvc.lock write is cut in half."""

    def __init__(self) -> None:
        self.requested = False

    @contextmanager
    def installed(self) -> Iterator[None]:
        previous = signal.signal(signal.SIGINT, self._handle)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second Ctrl-C: the user does not want to wait for the cancellation
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupted: cancelling the running stages (Ctrl-C again to stop waiting)", flush=True)


def run_plan(root: Path, plan: StagePlan, cmds: dict[str, str], options: dict[str, dict], env: dict[str, str],
             interrupt: Interrupt) -> int:
    """Run the stale stages of `plan`; returns the exit status (0, 1 when a stage failed, 130 on Ctrl-C)."""
    running: dict[ray.ObjectRef, str] = {}
    problems: list[str] = []
    while True:
        while not interrupt.requested and (ready := plan.ready()):
            for name in ready:
                if not prepare_if_changed(root, name):
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
                blocked = plan.fail(name)
                problems.append(f"stage '{name}' failed ({type(err).__name__}); its log: "
                                f"{log_path(root, name).relative_to(root)}"
                                + (f"; not run: {', '.join(sorted(blocked))}" if blocked else ""))
                print(f"error: {problems[-1]}", flush=True)
                continue
            commit(root, name)
            plan.finish(name)
            print(f"Stage '{name}' done on {info['node']} in {info['seconds']:.1f} s, committed", flush=True)
        if interrupt.requested and running:
            return _cancel(running)
    if interrupt.requested:
        return 130
    if problems:
        print("error: " + " | ".join(problems), file=sys.stderr)
        return 1
    return 0


def _cancel(running: dict) -> int:
    for task in running:
        ray.cancel(task, force=True)  # kills the worker; the stage's command dies with it
    ray.wait(list(running), num_returns=len(running), timeout=60)
    print(f"interrupted: not committed (rerun to redo them): {', '.join(sorted(running.values()))}",
          file=sys.stderr)
    return 130


def tracking_uri(args, params, multi_node: bool, stack: ExitStack, root: Path) -> dict[str, str]:
    """MLFLOW_TRACKING_URI for the tasks: given, served by one `mlflow server`, or the params' store as is."""
    if not params.study.mlflow:
        return {}
    if args.tracking_uri:
        return {"MLFLOW_TRACKING_URI": args.tracking_uri}
    store = params.tracking_uri()
    serve = args.mlflow == "server" or (args.mlflow == "auto" and multi_node and store.startswith("sqlite:"))
    if not serve:
        return {"MLFLOW_TRACKING_URI": store}
    host = args.mlflow_host or _driver_node_ip()
    print(f"starting mlflow server on {host} in front of {store}", flush=True)
    uri = stack.enter_context(mlflow_server(store, host, args.mlflow_port or free_port(host),
                                            log_path(root, "mlflow-server")))
    return {"MLFLOW_TRACKING_URI": uri}


def _driver_node_ip() -> str:
    here = ray.get_runtime_context().get_node_id()
    return next(node["NodeManagerAddress"] for node in ray.nodes() if node["NodeID"] == here)


def repro(args) -> int:
    root = Path.cwd().resolve()
    try:
        params = load_params(root / "params.yaml")
    except ParamsError as error:
        raise SystemExit(f"error: {error}") from None
    needs, cmds = read_graph(root, args.stages)
    kinds = {name: stage_kind(name) for name in needs}
    unknown = sorted({kind for kind in kinds.values() if kind not in params.cluster.model_dump()})
    if unknown:
        raise SystemExit(f"error: params.yaml: cluster has no resources for stage kind(s) {unknown}; add e.g. "
                         f"cluster.{unknown[0]}: {{num_cpus: 1, num_gpus: 0, resources: {{}}}}")
    if not stale_stages(root, args.stages):
        print("Data and pipelines are up to date.", flush=True)  # no cluster, no MLflow server needed
        return 0
    ray.init(address=args.address, log_to_driver=False)
    with ExitStack() as stack:
        stack.callback(ray.shutdown)
        nodes = [node for node in ray.nodes() if node["Alive"]]
        check_shared_filesystem(root)
        has_gpus = ray.cluster_resources().get("GPU", 0) > 0
        if not has_gpus:
            print("no GPUs in the cluster: every stage runs on CPUs (num_gpus ignored)", flush=True)
        options = {name: task_options(params.cluster.model_dump(), kind, has_gpus) for name, kind in kinds.items()}
        env = forwarded_env(tracking_uri(args, params, len(nodes) > 1, stack, root))
        interrupt = Interrupt()
        started = time.monotonic()
        with interrupt.installed():
            status = run_plan(root, StagePlan(needs), cmds, options, env, interrupt)
        print(f"cluster repro: {time.monotonic() - started:.1f} s on {len(nodes)} node(s), exit status {status}",
              flush=True)
        return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.study.cluster", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("repro", help="reproduce the pipeline (or the given stages) on a Ray cluster")
    run.add_argument("stages", nargs="*", help="stage names as in `dvc repro` (default: the whole pipeline)")
    run.add_argument("--address", default="auto", help="Ray cluster: auto (a running `ray start`) or HOST:PORT")
    run.add_argument("--mlflow", choices=("auto", "server", "store"), default="auto",
                     help="server: start one `mlflow server` in front of the store; store: the store as is; "
                          "auto: a server when the cluster has several nodes and the store is SQLite")
    run.add_argument("--tracking-uri", help="an MLflow server already running (the tasks get this URI)")
    run.add_argument("--mlflow-host", help="address the started server binds to (default: the driver node's)")
    run.add_argument("--mlflow-port", type=int, default=0, help="its port (default: a free one)")
    return repro(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
