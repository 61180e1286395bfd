"""The Ray runner (`python -m pipeline.study.cluster repro`) on a real two-node Ray cluster on 127.0.0.1.

One cluster (a head with one CPU, a worker with one CPU and a custom `fakegpu` resource that only it has, standing
in for a GPU: every evaluate stage must run on the worker) and one serial `dvc repro` of a study are shared by the
tests of this module. The study is the CI preset cut to one optimizer and one baseline (7 stages: prepare, a
search, its discretization, two retrainings, aggregate, and the download): the runner's scheduling, placement and
retries need a dependency chain and two stages that can run at once, not every row of the CI table, which
tests/test_pipeline_e2e.py checks. Ray 2.60 maps 127.0.0.1 to the machine's outside address unless
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, and `ray start` refuses to add a worker node in that mode, so the nodes are
started with Ray's own `ray.cluster_utils.Cluster` from this process, which also stops them.

Every stage runs with one thread (Ray gives a task OMP_NUM_THREADS = its num_cpus; the serial reference gets the
same), so the CPU runs are deterministic and the two studies comparable value for value. Outputs that record wall
times (search and retraining histories, the report's time/epoch columns) differ in those times only.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

from pipeline.study.presets import apply_preset

from pipeline.study.cluster_mlflow import ARTIFACT_DIR_NAME
from pipeline.study.tracking import GROUP_TAG
from tests.conftest import RAY_LOOPBACK_ONLY
from tests.test_pipeline_e2e import copy_project, edit_params, ran_stages

pytestmark = pytest.mark.slow
STAGE_ENV = {"ACTSEARCH_FUSED": "eager", "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
             "DVC_NO_ANALYTICS": "true"}
# Outputs whose bytes hold wall-clock times; all other hashes in dvc.lock must match the serial run's exactly.
TIMED_OUTPUTS = ("results/search/", "results/evaluate/", "reports/")
KILLED_STAGE = "evaluate-baseline@relu-resnet8-0"


def dvc(project: Path, *args: str) -> str:
    """`dvc <args>` in `project`, with a timeout for a whole study on a loaded 2-core machine."""
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"} | STAGE_ENV
    done = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=project, capture_output=True,
                          text=True, timeout=3600, env=env | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}"
                                                                      f"{env.get('PATH', '')}"})
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"dvc {' '.join(args)} failed:\n{output[-6000:]}"
    return output


def ci_project(destination: Path, archive: Path, cache: Path) -> Path:
    project = copy_project(destination)
    apply_preset("ci", project / "params.yaml")

    def ci_params(params):
        params["data"]["source"] = str(archive)
        params["data"]["cache_dir"] = str(cache)  # decoded images, shared by both studies (no stage's param)
        params["search"]["optimizers"] = ["darts"]
        params["evaluate"]["baselines"] = ["relu"]
    edit_params(project, ci_params)
    settings = yaml.safe_load((project / "cluster.yaml").read_text())
    settings["evaluate"]["resources"] = {"fakegpu": 1}  # retrainings only on the worker node
    settings["search"]["num_cpus"] = 1  # the test's nodes have one CPU each
    (project / "cluster.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    return project


@pytest.fixture(scope="module")
def ray_cluster():
    # RAY_LOOPBACK_ONLY is in the environment already: conftest sets it before Ray is first imported.
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        worker = cluster.add_node(num_cpus=1, resources={"fakegpu": 1})
        cluster.wait_for_nodes()
        assert cluster.address.startswith("127.0.0.1:"), cluster.address
        yield cluster.address, worker.node_id
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def image_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("image-cache")


@pytest.fixture(scope="module")
def serial_study(tmp_path_factory, shared_archive_path, image_cache):
    project = ci_project(tmp_path_factory.mktemp("serial") / "project", shared_archive_path, image_cache)
    started = time.monotonic()
    dvc(project, "repro")  # one thread per stage (STAGE_ENV), as the Ray tasks get
    print(f"\nserial dvc repro of the cut CI preset: {time.monotonic() - started:.0f} s")  # for docs/cluster.md
    return project


@pytest.fixture(scope="module")
def shared_archive_path():
    from tests.conftest import SHARED_ARCHIVE
    if not SHARED_ARCHIVE.exists():
        pytest.skip(f"the shared CIFAR-10 archive is not at {SHARED_ARCHIVE}")
    return SHARED_ARCHIVE


@pytest.fixture(scope="module")
def cluster_study(tmp_path_factory, shared_archive_path, image_cache, ray_cluster):
    project = ci_project(tmp_path_factory.mktemp("cluster") / "project", shared_archive_path, image_cache)
    started = time.monotonic()
    output = runner(project, ray_cluster[0], "--mlflow", "server", "--mlflow-host", "127.0.0.1")
    print(f"\nthe runner on the cut CI preset: {time.monotonic() - started:.0f} s; {output.splitlines()[-1]}")
    return project, output


def runner_command(address: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.study.cluster", "repro", "--address", address, *extra]


def runner_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("MLFLOW_TRACKING_URI", "OMP_NUM_THREADS")}
    return env | RAY_LOOPBACK_ONLY | STAGE_ENV | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"}


def runner(project: Path, address: str, *extra: str) -> str:
    done = subprocess.run(runner_command(address, *extra), cwd=project, env=runner_env(), capture_output=True,
                          text=True, timeout=3600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"the runner failed:\n{output[-6000:]}"
    return output


def lock_entries(project: Path) -> dict:
    """dvc.lock's stages with the hashes of time-recording outputs blanked (their values are compared elsewhere)."""
    stages = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    for entry in stages.values():
        for item in entry.get("deps", []) + entry.get("outs", []):
            if item["path"].startswith(TIMED_OUTPUTS) or f"{item['path']}/" in TIMED_OUTPUTS:
                for key in ("md5", "size"):  # nfiles stays: the same files
                    item.pop(key, None)
    return stages


def result_of(metrics: dict) -> dict:
    """A retraining's metrics.json less its wall-clock times and its MLflow model's URI (a new id per run)."""
    return {k: v for k, v in metrics.items() if "time" not in k and k != "model_uri"}


def without_times(table: pd.DataFrame) -> pd.DataFrame:
    return table[[column for column in table.columns if "time" not in column]]


def head_node(nodes: dict[str, str], worker: str) -> str:
    others = set(nodes.values()) - {worker}
    assert len(others) == 1, nodes
    return others.pop()


def test_the_runner_reproduces_a_serial_dvc_repro(serial_study, cluster_study, ray_cluster):
    project, output = cluster_study
    address, worker = ray_cluster
    stages = yaml.safe_load((serial_study / "dvc.lock").read_text())["stages"]
    assert ran_stages(output) == set(stages), output
    # Each retraining ran on the worker node, the only one with the stand-in GPU; the head ran the others.
    nodes = {name: re.search(r", node (\w+),", (project / "logs" / f"{name}.log").read_text()).group(1)
             for name in stages}
    assert all(node == worker for name, node in nodes.items() if name.startswith("evaluate")), nodes
    assert set(nodes.values()) == {worker, head_node(nodes, worker)}, "both nodes ran stages"
    assert lock_entries(project) == lock_entries(serial_study)
    status = dvc(project, "status", "--json")
    assert json.loads(status[status.index("{"):]) == {}, status

    serial_table = pd.read_csv(serial_study / "reports" / "results.csv")
    cluster_table = pd.read_csv(project / "reports" / "results.csv")
    pd.testing.assert_frame_equal(without_times(cluster_table), without_times(serial_table))
    for genotype in sorted((serial_study / "results" / "discretize").glob("*/genotype.json")):
        relative = genotype.relative_to(serial_study)
        assert (project / relative).read_text() == genotype.read_text(), relative
    for metrics in sorted((serial_study / "results" / "evaluate").glob("*/*/*/metrics.json")):
        ours = json.loads((project / metrics.relative_to(serial_study)).read_text())
        theirs = json.loads(metrics.read_text())
        assert result_of(ours) == result_of(theirs), metrics

    check_mlflow_runs(project, set(stages) - {"download", "select"})  # neither logs a run (retrainings tag the choice)
    again = runner(project, address)
    assert not ran_stages(again) and "up to date" in again, again


def check_mlflow_runs(project: Path, stages: set[str]) -> None:
    """The stages logged through the runner's mlflow server into the project's SQLite store."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(yaml.safe_load((project / "params.yaml").read_text())
                                               ["study"]["experiment"])
    every = client.search_runs([experiment.experiment_id], max_results=500)
    [parent] = [run for run in every if GROUP_TAG in run.data.tags]  # one study: one parent run
    runs = [run for run in every if GROUP_TAG not in run.data.tags]
    assert {run.info.run_name for run in runs} == stages
    assert {run.data.tags["mlflow.parentRunId"] for run in runs} == {parent.info.run_id}
    assert all(run.info.status == "FINISHED" for run in every)
    # Artifacts went through the server (which is stopped now): URIs only it resolves, files in its destination.
    assert all(run.info.artifact_uri.startswith("mlflow-artifacts:") for run in every)
    assert any(path.is_file() for path in (project / ARTIFACT_DIR_NAME).rglob("*")), "artifacts go through the server"


def test_a_killed_worker_is_retried_and_the_stage_resumes_to_the_same_result(cluster_study, ray_cluster,
                                                                               serial_study):
    project, _ = cluster_study
    output_dir = project / "results" / "evaluate" / "relu" / "resnet8" / "seed0"
    before = json.loads((output_dir / "metrics.json").read_text())
    shutil.rmtree(output_dir)  # DVC now finds the stage changed: the runner reruns it, then aggregate
    log = project / "logs" / f"{KILLED_STAGE}.log"
    log.unlink()
    checkpoint = project / "checkpoints" / f"{KILLED_STAGE.replace('@', '-')}.pt"
    study = subprocess.Popen(runner_command(ray_cluster[0]), cwd=project, env=runner_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 3600
        while not checkpoint.exists():  # the first epoch is done: kill the Ray worker that runs the stage
            assert study.poll() is None and time.monotonic() < deadline, "the stage ended before its checkpoint"
            time.sleep(0.2)
        worker = int(re.findall(r"ray worker pid (\d+)", log.read_text())[-1])
        stage_processes = psutil.Process(worker).children(recursive=True)
        assert stage_processes, "the stage's command runs as the worker's child"
        os.kill(worker, signal.SIGKILL)
        gone, alive = psutil.wait_procs(stage_processes, timeout=30)
        assert not alive, f"the stage's command outlived its killed worker: {alive}"
        output, _ = study.communicate(timeout=3600)
    finally:
        if study.poll() is None:
            study.send_signal(signal.SIGINT)
            study.wait(timeout=120)
    assert study.returncode == 0, output[-6000:]
    attempts = re.findall(r"ray worker pid (\d+)", log.read_text())
    assert len(attempts) == 2 and int(attempts[1]) != worker, "Ray retried the stage in a new worker"
    retry = log.read_text().split(f"ray worker pid {attempts[1]}")[1]
    assert "resuming from epoch 1 of 2" in retry, "the retry resumed from the checkpoint of the killed attempt"
    after = json.loads((output_dir / "metrics.json").read_text())
    assert result_of(after) == result_of(before)
    pd.testing.assert_frame_equal(without_times(pd.read_csv(project / "reports" / "results.csv")),
                                  without_times(pd.read_csv(serial_study / "reports" / "results.csv")))
    status = dvc(project, "status", "--json")
    assert json.loads(status[status.index("{"):]) == {}, status
