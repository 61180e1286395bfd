"""The Ray runner's MLflow server as started for several nodes (pipeline.study.cluster_mlflow): MLflow's basic-auth
app with generated credentials, here bound to 127.0.0.1. A request without them gets 401; a stage that reads them
as a Ray task does (from the runner's private secrets file) logs normally; afterwards nothing is left running."""
import os
import urllib.error
import urllib.request

import psutil
import pytest

from pipeline.study.cluster_mlflow import Credentials, mlflow_server
from pipeline.study.cluster_ray import free_port
from pipeline.study.cluster_secrets import SECRETS_FILE_ENV, read_secrets, write_secrets

pytestmark = pytest.mark.slow


def test_the_multi_node_server_refuses_requests_without_the_runs_credentials(tmp_path, monkeypatch):
    credentials = Credentials.generate()
    port = free_port("127.0.0.1")
    search = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1"
    log = tmp_path / "logs" / "mlflow-server.log"
    with mlflow_server(f"sqlite:///{tmp_path / 'mlflow.db'}", "127.0.0.1", port, log, credentials) as uri:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(search, timeout=30)
        assert refused.value.code == 401

        # What a task does: its credentials come from the file whose path alone is in its arguments.
        task_env = {SECRETS_FILE_ENV: str(write_secrets(tmp_path, credentials.as_env()))}
        for name, value in read_secrets(task_env).items():
            monkeypatch.setenv(name, value)
        from mlflow import MlflowClient
        client = MlflowClient(tracking_uri=uri)
        experiment = client.create_experiment("auth-check")
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "loss", 0.5)
        assert client.get_run(run.info.run_id).data.metrics == {"loss": 0.5}
        leader = int(log.read_text().split("mlflow server pid ")[1].split()[0])
    assert credentials.password not in log.read_text(), "the password is in no log"
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
    left = [p.pid for p in psutil.process_iter() if _group(p.pid) == leader]
    assert not left, f"processes of the server's group outlived it: {left}"


def _group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None
