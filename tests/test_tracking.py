"""MLflow tracking: what a stage logs can be read back, failures are marked, concurrency loses nothing."""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from pipeline.study.tracking import (DVC_EXP_BASELINE_ENV, DVC_EXP_NAME_ENV, GROUP_TAG, PARENT_RUN_ENV,
                                     StageRun)
from pipeline.study.tracking_store import (TrackingError, check_tracking, default_tracking_uri, resolve_tracking_uri,
                                     workspace_root)

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "mlflow_worker.py"
sys.path.insert(0, str(ROOT / "tests"))
from mlflow_worker import expected_value  # noqa: E402  (imports no mlflow: collection stays fast)

STAGE_TAGS = {"optimizer": "darts", "space": "simple", "activation": None, "network": "resnet20", "seed": 0}


@pytest.fixture(autouse=True)
def mlflow_env(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):  # StageRun may set them
        monkeypatch.setenv(name, "")  # records the original state, so teardown restores it
        monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def template_db(tmp_path_factory) -> Path:
    """An empty, migrated MLflow database: creating one takes seconds, copying it does not."""
    from mlflow import MlflowClient
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store_uri(tmp_path, template_db) -> str:
    shutil.copy(template_db, tmp_path / "mlflow.db")
    return default_tracking_uri(tmp_path)


def client_for(uri: str):
    from mlflow import MlflowClient
    return MlflowClient(tracking_uri=uri)


def test_uri_precedence_is_env_then_param_then_absolute_default(tmp_path, monkeypatch):
    default = default_tracking_uri(tmp_path)
    assert default == f"sqlite:///{tmp_path.resolve()}/mlflow.db" and default.startswith("sqlite:////")
    assert resolve_tracking_uri(tmp_path, None) == default
    assert resolve_tracking_uri(tmp_path, "  ") == default
    assert resolve_tracking_uri(tmp_path, "http://param:5000") == "http://param:5000"
    # a relative sqlite path is anchored at the project root, not at the (temporary) working directory
    assert resolve_tracking_uri(tmp_path, "sqlite:///runs/m.db") == f"sqlite:///{tmp_path.resolve()}/runs/m.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert resolve_tracking_uri(tmp_path, "http://param:5000") == "http://env:5000"


def test_dvc_temporary_experiment_copies_log_to_the_workspace_store(tmp_path):
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmpab12cd"  # where `dvc exp run --temp/--queue` executes
    copy.mkdir(parents=True)
    assert workspace_root(copy) == tmp_path.resolve() and workspace_root(tmp_path) == tmp_path.resolve()
    assert default_tracking_uri(copy) == default_tracking_uri(tmp_path)
    assert resolve_tracking_uri(copy, "sqlite:///m.db") == f"sqlite:///{tmp_path.resolve()}/m.db"


def test_stage_run_logs_tags_params_metrics_and_artifacts(tmp_path, store_uri, monkeypatch):
    uri = store_uri
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "history.csv").write_text("epoch,loss\n0,2.3\n")
    (tmp_path / "out" / "sub").mkdir()
    (tmp_path / "out" / "sub" / "note.txt").write_text("deep")
    (tmp_path / "weights.pt").write_bytes(b"not really torch")
    parent = client_for(uri)
    parent_id = parent.create_run(parent.create_experiment("parent-exp")).info.run_id
    monkeypatch.setenv(PARENT_RUN_ENV, parent_id)
    params = {"search": {"epochs": 2, "lr": {"w": 0.1, "alpha": 3e-4}}, "ops": ["relu", "tanh"], "flag": True}
    with StageRun("search@darts-simple", experiment="study", tracking_uri=uri, tags=STAGE_TAGS,
                  params=params, project_root=ROOT) as run:
        for epoch in range(3):
            run.log_metrics({"loss": 2.0 - epoch, "w": {"u1": {"relu": 0.1 * epoch}}}, step=epoch)
        run.log_metrics({"bad": float("nan")}, step=0)
        run.log_params({"late": {"value": 7}})
        run.set_tags({"status": "diverged"})
        run.log_artifact(tmp_path / "out" / "history.csv")
        run.log_artifact(tmp_path / "out")
        run.log_dict({"genotype": ["relu"]}, "genotype.json")
        run.log_text("x*sigmoid(x)", "formula.txt")
        run.log_model_weights(tmp_path / "weights.pt")
    client = client_for(uri)
    logged = client.get_run(run.run_id)
    tags = logged.data.tags
    assert logged.info.status == "FINISHED" and logged.info.run_name == "search@darts-simple"
    assert logged.info.experiment_id == client.get_experiment_by_name("study").experiment_id
    assert tags["stage"] == "search@darts-simple" and tags["optimizer"] == "darts" and tags["space"] == "simple"
    assert tags["network"] == "resnet20" and tags["seed"] == "0" and "activation" not in tags  # None: no tag
    assert tags["mlflow.parentRunId"] == parent_id and tags["status"] == "diverged"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert tags["git_commit"] == (head or "unknown") and tags["git_dirty"] in ("true", "false", "unknown")
    assert logged.data.params == {"search.epochs": "2", "search.lr.w": "0.1", "search.lr.alpha": "0.0003",
                                  "ops": '["relu", "tanh"]', "flag": "true", "late.value": "7"}
    history = client.get_metric_history(run.run_id, "w.u1.relu")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(0, 0.0), (1, 0.1), (2, 0.2)]
    assert [m.step for m in client.get_metric_history(run.run_id, "loss")] == [0, 1, 2]
    assert math.isnan(logged.data.metrics["bad"]) and tags["nonfinite_metrics"] == "bad"
    top = {a.path for a in client.list_artifacts(run.run_id)}
    assert top == {"history.csv", "out", "genotype.json", "formula.txt", "weights"}
    assert {a.path for a in client.list_artifacts(run.run_id, "out/sub")} == {"out/sub/note.txt"}
    assert [a.path for a in client.list_artifacts(run.run_id, "weights")] == ["weights/weights.pt"]
    downloaded = Path(client.download_artifacts(run.run_id, "", str(tmp_path / "dl")))
    assert json.loads((downloaded / "genotype.json").read_text()) == {"genotype": ["relu"]}
    assert (downloaded / "formula.txt").read_text() == "x*sigmoid(x)"
    assert (downloaded / "out" / "sub" / "note.txt").read_text() == "deep"
    # artifacts sit next to the database, not in ./mlruns of whatever directory the stage ran in
    assert (tmp_path / "mlartifacts" / "study").is_dir() and not (Path.cwd() / "mlruns").exists()


def test_the_stage_runs_of_one_study_nest_under_one_parent_named_by_the_dvc_experiment(tmp_path, store_uri,
                                                                                       monkeypatch):
    """dvc repro: one parent per git commit and params.yaml; dvc exp run -n NAME: its own parent, tagged NAME."""
    for name in (PARENT_RUN_ENV, DVC_EXP_NAME_ENV, DVC_EXP_BASELINE_ENV):
        monkeypatch.delenv(name, raising=False)
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text("evaluate: {epochs: 2}\n")

    def stage(name: str) -> dict:
        with StageRun(name, experiment="study", tracking_uri=store_uri, project_root=project) as run:
            pass
        return client_for(store_uri).get_run(run.run_id).data.tags

    first, second = stage("prepare"), stage("aggregate")
    assert first["mlflow.parentRunId"] == second["mlflow.parentRunId"]
    parent = client_for(store_uri).get_run(first["mlflow.parentRunId"])
    digest = hashlib.md5(b"evaluate: {epochs: 2}\n").hexdigest()
    assert parent.info.status == "FINISHED" and parent.data.tags["params_md5"] == digest
    assert parent.data.tags["dvc_exp_name"] == first["dvc_exp_name"] == "workspace"
    assert parent.info.run_name == f"workspace @ unknown, params {digest[:8]}"  # no git repository here

    (project / "params.yaml").write_text("evaluate: {epochs: 3}\n")  # other params: another study
    changed = stage("aggregate")
    monkeypatch.setenv(DVC_EXP_BASELINE_ENV, "abc123")
    monkeypatch.setenv(DVC_EXP_NAME_ENV, "shorter")
    experiment = stage("aggregate")
    monkeypatch.delenv(DVC_EXP_NAME_ENV)
    unnamed = stage("aggregate")
    parents = [first["mlflow.parentRunId"], changed["mlflow.parentRunId"], experiment["mlflow.parentRunId"],
               unnamed["mlflow.parentRunId"]]
    assert len(set(parents)) == 4
    assert experiment["dvc_exp_name"] == "shorter" and unnamed["dvc_exp_name"] == "unnamed experiment"
    assert client_for(store_uri).get_run(parents[2]).data.tags["dvc_exp_name"] == "shorter"
    monkeypatch.setenv(PARENT_RUN_ENV, parents[0])  # the Ray runner's own parent wins
    assert stage("aggregate")["mlflow.parentRunId"] == parents[0]


def test_exception_marks_run_failed_and_propagates(tmp_path, store_uri):
    uri = store_uri
    with pytest.raises(ZeroDivisionError):
        with StageRun("evaluate@relu-resnet20-0", experiment="study", tracking_uri=uri) as run:
            run.log_metrics({"loss": 1.0}, step=0)
            1 / 0
    logged = client_for(uri).get_run(run.run_id)
    assert logged.info.status == "FAILED" and logged.data.tags["status"] == "failed"
    assert "ZeroDivisionError" in logged.data.tags["error"]
    with pytest.raises(SystemExit):
        with StageRun("prepare", experiment="study", tracking_uri=uri) as done:
            sys.exit(0)  # a successful early exit is not a failure
    assert client_for(uri).get_run(done.run_id).info.status == "FINISHED"


def test_bad_status_and_bad_metric_are_refused(tmp_path, store_uri):
    outside = StageRun("s", experiment="study", tracking_uri=store_uri)
    with pytest.raises(RuntimeError, match="only inside its `with` block"):
        outside.log_metrics({"a": 1.0})
    with StageRun("s", experiment="study", tracking_uri=store_uri) as run:
        with pytest.raises(ValueError, match="status tag must be one of"):
            run.set_tags({"status": "great"})
        with pytest.raises(TypeError, match="metric 'acc' must be a number"):
            run.log_metrics({"acc": "high"})
        with pytest.raises(FileNotFoundError, match="no such file"):
            run.log_artifact(tmp_path / "missing.csv")


def test_disabled_run_does_nothing(tmp_path):
    uri = default_tracking_uri(tmp_path)
    with StageRun("s", experiment="study", tracking_uri=uri, enabled=False) as run:
        run.log_metrics({"a": 1.0}, step=0)
        run.log_params({"a": 1})
        run.set_tags({"status": "ok"})
        run.log_dict({"a": 1}, "a.json")
        run.log_text("a", "a.txt")
        run.log_artifact(tmp_path / "missing")
    assert run.run_id is None and not (tmp_path / "mlflow.db").exists()


def test_unreachable_server_fails_fast_with_clear_message(tmp_path, monkeypatch):
    # How fast it fails is measured by dev/unreachable_store.py, not asserted here (no timings in unit tests).
    with pytest.raises(TrackingError) as caught:
        check_tracking("http://127.0.0.1:9")
    message = str(caught.value)
    assert "http://127.0.0.1:9" in message and "unreachable" in message and "unset MLFLOW_TRACKING_URI" in message
    # a stage reports it on entry, before any training
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    entered = False
    with pytest.raises(TrackingError, match="unreachable"):
        with StageRun("s", experiment="study", tracking_uri=resolve_tracking_uri(tmp_path, None)):
            entered = True
    assert not entered


def test_missing_sqlite_directory_fails_clearly(tmp_path):
    with pytest.raises(TrackingError, match="does not exist"):
        check_tracking(f"sqlite:///{tmp_path}/no/such/dir/mlflow.db")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(TrackingError, match="a_file does not exist"):
        check_tracking(f"sqlite:///{tmp_path}/a_file/mlflow.db")
    check_tracking(f"sqlite:///{tmp_path}/mlflow.db")  # a writable directory is fine, the db need not exist


def test_read_only_sqlite_directory_fails_clearly(tmp_path):
    locked = tmp_path / "readonly"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root writes anywhere; /proc takes no new files, even from root
            if not Path("/proc/self").is_dir():
                pytest.skip("running as root and no /proc to stand in for a read-only directory")
            locked = Path("/proc")
        with pytest.raises(TrackingError, match="is not writable"):
            check_tracking(f"sqlite:///{locked}/mlflow.db")
    finally:
        (tmp_path / "readonly").chmod(0o700)


def _locked_error():
    """What MLflow 3 raises when SQLite stays locked past its busy_timeout (see mlflow/store/db/utils.py)."""
    import sqlite3

    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE
    cause = sqlalchemy.exc.OperationalError("INSERT INTO metrics ...", {}, sqlite3.OperationalError(
        "database is locked"))
    return MlflowException(message=cause, error_code=TEMPORARILY_UNAVAILABLE)


def test_locked_store_is_retried_other_errors_are_not():
    from pipeline.study.tracking_store import retry_when_busy
    calls = []

    def flaky(value):
        calls.append(value)
        if len(calls) < 3:
            raise _locked_error()
        return value * 2

    assert retry_when_busy(flaky, 21) == 42 and calls == [21, 21, 21]

    def broken():
        calls.append("broken")
        raise ValueError("INVALID_PARAMETER_VALUE: param changed")

    calls.clear()
    with pytest.raises(ValueError, match="param changed"):
        retry_when_busy(broken)
    assert calls == ["broken"]


@pytest.mark.slow  # three processes importing mlflow and migrating a fresh database: ~30 s on 2 cores
def test_concurrent_processes_lose_no_run_and_no_metric(tmp_path):
    workers, runs, steps, keys = 3, 3, 30, 4
    uri = default_tracking_uri(tmp_path)  # a fresh database: the workers also race on creating it
    go = tmp_path / "go"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    procs = [subprocess.Popen([sys.executable, str(WORKER), uri, "concurrent", str(w), str(runs), str(steps),
                               str(keys), str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env, cwd=tmp_path) for w in range(workers)]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        go.touch()
        for proc in procs:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err[-3000:]
    finally:
        for proc in procs:
            proc.kill()
    client = client_for(uri)
    experiment_id = client.get_experiment_by_name("concurrent").experiment_id
    every = client.search_runs([experiment_id], max_results=1000)
    # One study (same directory, no git, no params.yaml): the racing workers made exactly one parent between them.
    [parent] = [r for r in every if GROUP_TAG in r.data.tags]
    found = [r for r in every if GROUP_TAG not in r.data.tags]
    assert len(found) == workers * runs and all(r.info.status == "FINISHED" for r in found)
    assert {r.data.tags["mlflow.parentRunId"] for r in found} == {parent.info.run_id}
    for logged in found:
        w, r = int(logged.data.tags["worker"]), int(logged.data.tags["run_index"])
        for key in range(keys):
            history = client.get_metric_history(logged.info.run_id, f"k{key}")
            assert sorted((m.step, m.value) for m in history) == [
                (s, expected_value(w, r, s, key)) for s in range(steps)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _api(base: str, endpoint: str, body: dict | None = None, query: dict | None = None) -> dict:
    """POST `body` as JSON, or GET with `query` (the REST API takes reads such as runs/get as GET)."""
    url = f"{base}/api/2.0/mlflow/{endpoint}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"},
                                     method="GET" if body is None else "POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_mlflow_server_serves_logged_runs_and_accepts_new_ones(tmp_path, store_uri, monkeypatch):
    uri = store_uri
    with StageRun("discretize@darts-simple", experiment="study", tracking_uri=uri, tags=STAGE_TAGS) as run:
        run.log_metrics({"gap": 0.25}, step=0)
        run.log_metrics({"gap": 0.5}, step=1)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1", "--artifacts-destination", (tmp_path / "served").as_uri()],
        cwd=tmp_path, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"))
    try:
        started = time.monotonic()
        while True:  # the server takes tens of seconds to start here: poll, do not guess
            if server.poll() is not None:
                pytest.fail(f"mlflow server exited: {(tmp_path / 'server.log').read_text()[-3000:]}")
            try:
                check_tracking(base)
                break
            except TrackingError:
                if time.monotonic() - started > 120:
                    pytest.fail(f"mlflow server not healthy after 120 s: "
                                f"{(tmp_path / 'server.log').read_text()[-3000:]}")
                time.sleep(0.5)
        print(f"mlflow server healthy after {time.monotonic() - started:.1f} s")
        experiments = _api(base, "experiments/search", {"max_results": 100})["experiments"]
        study_id = next(e["experiment_id"] for e in experiments if e["name"] == "study")
        runs = {r["info"]["run_id"]: r for r in _api(base, "runs/search", {"experiment_ids": [study_id]})["runs"]}
        tags = {t["key"]: t["value"] for t in runs[run.run_id]["data"]["tags"]}
        assert set(runs) == {run.run_id, tags["mlflow.parentRunId"]}  # the stage run and its study's parent run
        assert tags["stage"] == "discretize@darts-simple" and tags["status"] == "ok" and tags["seed"] == "0"
        assert {m["key"]: m["value"] for m in runs[run.run_id]["data"]["metrics"]} == {"gap": 0.5}

        monkeypatch.setenv("MLFLOW_TRACKING_URI", base)
        with StageRun("evaluate@relu-resnet20-0", experiment="served", tracking_uri=resolve_tracking_uri(
                tmp_path, None), tags=STAGE_TAGS, params={"lr": 0.1}) as remote:
            remote.log_metrics({"acc": 0.5, "odd": float("nan")}, step=0)
            remote.log_metrics({"acc": 0.75}, step=1)
            remote.log_text("hello", "note.txt")
        served = _api(base, "runs/get", query={"run_id": remote.run_id})["run"]
        assert served["info"]["status"] == "FINISHED"
        assert {p["key"]: p["value"] for p in served["data"]["params"]} == {"lr": "0.1"}
        history = client_for(base).get_metric_history(remote.run_id, "acc")
        assert sorted((m.step, m.value) for m in history) == [(0, 0.5), (1, 0.75)]
        assert math.isnan(client_for(base).get_run(remote.run_id).data.metrics["odd"])
        assert [a.path for a in client_for(base).list_artifacts(remote.run_id)] == ["note.txt"]
        assert list((tmp_path / "served").rglob("note.txt"))  # stored by the server, not by the client
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
