"""The Ray runner under faults, on a one-node Ray cluster on 127.0.0.1 and a toy DVC project whose four stages
(prepare -> search-a, search-b -> aggregate) take a second each: a second writer during a run, SIGTERM in the
middle of a run, a `dvc commit` that fails, and the runner's MLflow server once the runner has ended.

A stage can be held at its start by a gate file (`control/<stage>.wait`, removed by the test to let it go on), and
made to end without writing its output (`control/<stage>.no-output`), which fails its `dvc commit` as a full cache
disk would. Like a real search, each stage writes a checkpoint and leaves it to the runner to delete.
"""
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

from pipeline.study.presets import preset_params

from tests.conftest import RAY_LOOPBACK_ONLY

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
STAGES = ("prepare", "search-a", "search-b", "aggregate")
STAGE_SCRIPT = '''
import os, sys, time
from pathlib import Path
from pipeline.study.stage_checkpoints import checkpoint_file, drop_finished_checkpoint

stage = sys.argv[1]
checkpoint = checkpoint_file(Path.cwd(), stage)
checkpoint.parent.mkdir(exist_ok=True)
checkpoint.write_text("epoch 1")
Path("control", f"{stage}.started").touch()
while Path("control", f"{stage}.wait").exists():
    time.sleep(0.1)
time.sleep(float(os.environ.get("TOY_STAGE_SECONDS", "1")))
if not Path("control", f"{stage}.no-output").exists():
    Path("out").mkdir(exist_ok=True)
    Path("out", f"{stage}.txt").write_text(f"{stage} {os.environ.get('MLFLOW_TRACKING_URI', '')}")
drop_finished_checkpoint(checkpoint)
'''


def toy_project(folder: Path, mlflow: bool = False) -> Path:
    project = folder / "project"
    (project / "control").mkdir(parents=True)
    params = preset_params("ci", ROOT / "params.yaml")
    params["study"]["mlflow"] = mlflow
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    settings = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    settings["search"] = {"num_cpus": 1, "num_gpus": 0, "resources": {}}  # both searches at once
    (project / "cluster.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    (project / "stage.py").write_text(STAGE_SCRIPT)
    (project / "pipeline").symlink_to(ROOT / "pipeline")  # Ray's workers import the runner's code from there
    after = {"prepare": [], "search-a": ["prepare"], "search-b": ["prepare"], "aggregate": ["search-a", "search-b"]}
    stages = {name: {"cmd": f"python stage.py {name}", "deps": ["stage.py"] + [f"out/{d}.txt" for d in needs],
                     "outs": [f"out/{name}.txt"]} for name, needs in after.items()}
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    subprocess.run([_tool("dvc"), "init", "--no-scm", "-q"], cwd=project, check=True, env=toy_env())
    return project


def _tool(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def toy_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "OMP_NUM_THREADS")}
    return env | RAY_LOOPBACK_ONLY | {"MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "true",
                                      "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"}


def start_runner(project: Path, address: str, *extra: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.study.cluster", "repro", "--address", address, *extra],
                            cwd=project, env=toy_env() | env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish(runner: subprocess.Popen, timeout: float = 300) -> str:
    try:
        return runner.communicate(timeout=timeout)[0]
    finally:
        if runner.poll() is None:
            runner.kill()


def wait_for(path: Path, runner: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert runner.poll() is None, f"the runner ended first:\n{runner.stdout.read()[-4000:]}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)


def locked_stages(project: Path) -> set[str]:
    lock = project / "dvc.lock"
    return set(yaml.safe_load(lock.read_text())["stages"]) if lock.exists() else set()  # must parse


def _lock_so_far(project: Path) -> set[str]:
    """dvc.lock's stages while the runner may be writing it (DVC rewrites the file in place): empty if half-written."""
    try:
        return locked_stages(project)
    except (TypeError, KeyError, yaml.YAMLError):
        return set()


def dvc_status(project: Path) -> str:
    done = subprocess.run([_tool("dvc"), "status"], cwd=project, env=toy_env(), capture_output=True, text=True)
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def ray_address():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        cluster.wait_for_nodes()
        assert cluster.address.startswith("127.0.0.1:"), cluster.address
        yield cluster.address
    finally:
        cluster.shutdown()


def test_a_second_writer_is_refused_while_the_runner_runs_and_its_mlflow_server_leaves_nothing_behind(
        tmp_path, ray_address):
    project = toy_project(tmp_path, mlflow=True)
    gate = project / "control" / "prepare.wait"
    gate.touch()
    # MLflow's job runner on, as by MLflow's default: its consumer processes outlive `mlflow server` when only it
    # is stopped, so this checks that the runner stops the server's whole process group.
    runner = start_runner(project, ray_address, "--mlflow", "server", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="true")
    try:
        wait_for(project / "control" / "prepare.started", runner)
        repro = subprocess.run([_tool("dvc"), "repro"], cwd=project, env=toy_env(), capture_output=True, text=True,
                               timeout=120)
        assert repro.returncode != 0 and "Unable to acquire lock" in repro.stdout + repro.stderr, repro
        second = subprocess.run([sys.executable, "-m", "pipeline.study.cluster", "repro", "--address", ray_address],
                                cwd=project, env=toy_env(), capture_output=True, text=True, timeout=120)
        assert second.returncode != 0, second
        assert second.stderr.strip().splitlines() == [
            "error: another `dvc repro` or Ray runner is working on this project (DVC's lock .dvc/tmp/lock is held); "
            "wait for it to end, then rerun"], second.stderr
        assert not (project / "out").exists(), "nobody else ran a stage meanwhile"
    finally:
        gate.unlink()
    output = finish(runner)
    assert runner.returncode == 0, output[-4000:]
    # Checked at once: MLflow's job consumers, left alone, notice within seconds that their parent is gone.
    server_log = (project / "logs" / "mlflow-server.log").read_text()
    pid, host, port = re.search(r"mlflow server pid (\d+) on http://([\d.]+):(\d+)", server_log).groups()
    assert host == "127.0.0.1", "one node: the server is reachable from this machine only"
    assert f"http://127.0.0.1:{port}" in (project / "out" / "search-a.txt").read_text(), "the stages used it"
    with pytest.raises(OSError):  # connection refused: nothing listens any more
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
    left = [p for p in psutil.process_iter(["pid", "cmdline"])
            if _in_group(p, int(pid)) or f"--port {port}" in " ".join(p.info["cmdline"] or [])]
    assert not left, f"server processes outlived the runner: {[p.info for p in left]}"
    assert locked_stages(project) == set(STAGES) and "up to date" in dvc_status(project)
    assert not list((project / "checkpoints").iterdir()), "each checkpoint deleted after its stage's commit"


def _in_group(process: psutil.Process, group: int) -> bool:
    try:
        return os.getpgid(process.pid) == group
    except (ProcessLookupError, PermissionError):
        return False


def test_sigterm_cancels_like_ctrl_c_leaving_a_dvc_lock_that_parses_and_a_rerun_completes(tmp_path, ray_address):
    project = toy_project(tmp_path)
    gate = project / "control" / "search-a.wait"
    gate.touch()
    runner = start_runner(project, ray_address)
    wait_for(project / "control" / "search-a.started", runner)
    deadline = time.monotonic() + 120
    while "search-b" not in _lock_so_far(project):  # the other search finishes and is committed meanwhile
        assert runner.poll() is None and time.monotonic() < deadline, "search-b was never committed"
        time.sleep(0.2)
    runner.send_signal(signal.SIGTERM)
    output = finish(runner)
    assert runner.returncode == 128 + signal.SIGTERM, f"not a graceful stop ({runner.returncode}):\n{output}"
    assert "not committed (rerun to redo them): search-a" in output
    assert locked_stages(project) == {"prepare", "search-b"}, "exactly the finished stages are recorded"
    gate.unlink()
    rerun = start_runner(project, ray_address)
    output = finish(rerun)
    assert rerun.returncode == 0, output[-4000:]
    assert set(re.findall(r"Running stage '([^']+)'", output)) == {"search-a", "aggregate"}, output
    assert locked_stages(project) == set(STAGES) and "up to date" in dvc_status(project)


def test_a_failed_commit_fails_that_stage_only_and_keeps_its_checkpoint(tmp_path, ray_address):
    project = toy_project(tmp_path)
    (project / "control" / "search-a.no-output").touch()  # its `dvc commit` fails: no output to record
    runner = start_runner(project, ray_address)
    output = finish(runner)
    assert runner.returncode == 1, output[-4000:]
    assert re.search(r"error: stage 'search-a' ran, but `dvc commit` failed .*not run: aggregate", output), output
    assert locked_stages(project) == {"prepare", "search-b"}, "the other search finished and was committed"
    assert (project / "checkpoints" / "search-a.pt").exists(), "kept: the rerun resumes instead of recomputing"
    assert not (project / "checkpoints" / "search-b.pt").exists(), "deleted once its stage was committed"
