"""The Ray runner's security and signal settings, without a cluster: where its MLflow server listens and with what
credentials, what travels in a task's arguments, the warning for a Ray cluster without token auth, and stop
signals handled like Ctrl-C."""
import argparse
import os
import signal
import stat
from contextlib import contextmanager

import pytest

from pipeline.study import cluster
from pipeline.study.cluster_ray import forwarded_env, ray_auth_warning
from pipeline.study.cluster_secrets import SECRETS_FILE_ENV, read_secrets, write_secrets
from pipeline.study.cluster_signals import Interrupt


def test_a_cluster_of_several_nodes_without_token_auth_gets_a_warning():
    assert ray_auth_warning(["127.0.0.1"], token_auth=False) is None, "one node on loopback: not reachable"
    assert ray_auth_warning(["10.0.0.1", "10.0.0.2", "10.0.0.3"], token_auth=True) is None
    warning = ray_auth_warning(["10.0.0.1", "10.0.0.2", "10.0.0.3"], token_auth=False)
    assert warning.startswith("warning:") and "3 nodes" in warning and "RAY_AUTH_MODE=token" in warning
    assert "\n" not in warning
    alone = ray_auth_warning(["192.0.2.2"], token_auth=False)  # `ray start --head` on Ray 2.60's defaults
    assert "listens on 192.0.2.2" in alone and "RAY_AUTH_MODE=token" in alone


def test_the_runner_prints_the_warning_for_the_node_count_ray_reports(monkeypatch, capsys):
    # The node count is mocked: the runner stops right after the warning, at the shared-filesystem check.
    monkeypatch.chdir(cluster.Path(__file__).resolve().parents[1])
    monkeypatch.setattr(cluster, "locked_project", _fake_project)
    monkeypatch.setattr(cluster.ray, "init", lambda **kwargs: None)
    monkeypatch.setattr(cluster.ray, "shutdown", lambda: None)
    monkeypatch.setattr(cluster.ray, "nodes", lambda: [{"Alive": True, "NodeManagerAddress": f"10.0.0.{n}"}
                                                       for n in range(4)])
    monkeypatch.setattr(cluster, "token_auth_enabled", lambda: False)

    def stop(root):
        raise SystemExit("stopped after the warning")
    monkeypatch.setattr(cluster, "check_shared_filesystem", stop)
    with pytest.raises(SystemExit, match="stopped after the warning"):
        cluster.main(["repro"])
    assert "4 nodes and no token authentication" in capsys.readouterr().err


@contextmanager
def _fake_project(root):
    class Project:
        def graph(self, targets):
            return {"prepare": set()}, {"prepare": "true"}

        def stale(self, targets):
            return {"prepare": ["changed"]}
    yield Project()


def test_no_secret_travels_in_a_task_argument_and_the_tasks_read_them_from_a_private_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2hunter2")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "someone")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "t0k3n")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "kept")
    env = forwarded_env({"MLFLOW_TRACKING_URI": "http://10.0.0.1:5000"})
    assert env["MLFLOW_EXPERIMENT_NAME"] == "kept" and env["MLFLOW_TRACKING_URI"] == "http://10.0.0.1:5000"
    assert not {"MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_TOKEN"} & set(env)
    assert "hunter2hunter2" not in repr(env)

    secrets = {"MLFLOW_TRACKING_USERNAME": "someone", "MLFLOW_TRACKING_PASSWORD": "hunter2hunter2"}
    path = write_secrets(tmp_path, secrets)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, "readable by this user only"
    assert read_secrets({SECRETS_FILE_ENV: str(path)}) == secrets
    assert read_secrets({}) == {}


class _ServerCalls:
    """Stands in for cluster.mlflow_server: records where it was asked to listen, and with what credentials."""

    def __init__(self):
        self.calls = []

    @contextmanager
    def __call__(self, store, host, port, log, credentials=None):
        self.calls.append((host, credentials))
        yield f"http://{host}:{port}"


@pytest.mark.parametrize("multi_node", [False, True])
def test_the_runners_server_binds_loopback_on_one_node_and_requires_credentials_on_several(tmp_path, monkeypatch,
                                                                                           multi_node):
    for name in ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    server = _ServerCalls()
    monkeypatch.setattr(cluster, "mlflow_server", server)
    monkeypatch.setattr(cluster, "_driver_node_ip", lambda: "10.1.2.3")
    monkeypatch.setattr(cluster, "free_port", lambda host: 5999)
    params = argparse.Namespace(study=argparse.Namespace(mlflow=True),
                                tracking_uri=lambda: f"sqlite:///{tmp_path}/mlflow.db")
    args = argparse.Namespace(tracking_uri=None, mlflow="auto", mlflow_host=None, mlflow_port=0)
    with cluster.ExitStack() as stack:
        env, secrets = cluster.tracking_env(args, params, multi_node, stack, tmp_path)
    if not multi_node:
        assert server.calls == [], "one node: the locked SQLite store, no server"
        args.mlflow = "server"
        with cluster.ExitStack() as stack:
            env, secrets = cluster.tracking_env(args, params, multi_node, stack, tmp_path)
        assert server.calls == [("127.0.0.1", None)] and secrets == {}
        assert env == {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5999"}
        return
    ((host, credentials),) = server.calls
    assert host == "10.1.2.3" and credentials is not None and len(credentials.password) >= 32
    assert secrets == {"MLFLOW_TRACKING_USERNAME": credentials.username,
                       "MLFLOW_TRACKING_PASSWORD": credentials.password}
    assert credentials.password not in repr(env)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_sigterm_and_sighup_only_ask_the_loop_to_stop_as_ctrl_c_does(signum):
    interrupt, before = Interrupt(), signal.getsignal(signum)
    with interrupt.installed():
        os.kill(os.getpid(), signum)  # without a handler, SIGTERM and SIGHUP would end pytest here
        for _ in range(1000):
            if interrupt.requested:
                break
        assert interrupt.requested and interrupt.exit_status() == 128 + signum
        with pytest.raises(KeyboardInterrupt):  # a second one stops the waiting
            os.kill(os.getpid(), signum)
            for _ in range(1000):
                pass
    assert signal.getsignal(signum) is before, "the previous handler is back after the run"
