"""A tracking server that is away for a while does not end a stage (pipeline.study.tracking_store.retry_when_busy):
the call is retried with a warning per retry, for a bounded time; other errors are not retried. First with fake
failing calls and a fake clock, then a real `mlflow server` stopped and restarted while a stage logs."""
import logging
import threading
import time

import pytest
from mlflow.exceptions import MlflowException

from pipeline.study import tracking_store
from pipeline.study.cluster_mlflow import mlflow_server
from pipeline.study.cluster_ray import free_port
from pipeline.study.tracking import StageRun
from pipeline.study.tracking_store import OUTAGE_ENV, retry_when_busy

REFUSED = MlflowException(
    "API request to http://127.0.0.1:5999/api/2.0/mlflow/runs/log-batch failed with exception "
    "HTTPConnectionPool(host='127.0.0.1', port=5999): Max retries exceeded with url: /api/2.0/mlflow/runs/log-batch "
    "(Caused by NewConnectionError('<urllib3.connection.HTTPConnection object>: Failed to establish a new "
    "connection: [Errno 111] Connection refused'))")


class FakeClock:
    def __init__(self, monkeypatch):
        self.now, self.sleeps = 0.0, []
        monkeypatch.setattr(tracking_store.time, "monotonic", lambda: self.now)
        monkeypatch.setattr(tracking_store.time, "sleep", self.sleep)

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def failing(times: int, error: Exception):
    calls = []

    def call(value):
        calls.append(value)
        if len(calls) <= times:
            raise error
        return value
    return call, calls


def test_an_unreachable_server_is_retried_with_a_warning_each_time_until_it_answers(monkeypatch, caplog):
    clock = FakeClock(monkeypatch)
    call, calls = failing(4, REFUSED)
    with caplog.at_level(logging.WARNING, logger=tracking_store.__name__):
        assert retry_when_busy(call, "logged") == "logged"
    assert len(calls) == 5 and clock.sleeps == [1.0, 2.0, 4.0, 8.0]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4 and all("MLflow tracking server unreachable" in w for w in warnings)
    assert "runs/log-batch" in warnings[0] and "Connection refused" in warnings[0] and "\n" not in warnings[0]


def test_an_outage_longer_than_the_budget_fails_the_call(monkeypatch):
    monkeypatch.setenv(OUTAGE_ENV, "60")
    clock = FakeClock(monkeypatch)
    call, calls = failing(10 ** 6, REFUSED)
    with pytest.raises(MlflowException, match="Connection refused"):
        retry_when_busy(call, "never")
    assert sum(clock.sleeps) <= 60 and clock.sleeps[:3] == [1.0, 2.0, 4.0], "bounded, with backoff"
    assert len(calls) == len(clock.sleeps) + 1


def test_an_error_that_is_not_transient_is_not_retried(monkeypatch):
    clock = FakeClock(monkeypatch)
    call, calls = failing(1, MlflowException("INVALID_PARAMETER_VALUE: metric name is too long"))
    with pytest.raises(MlflowException, match="INVALID_PARAMETER_VALUE"):
        retry_when_busy(call, "x")
    assert len(calls) == 1 and clock.sleeps == []


@pytest.mark.slow
def test_a_stage_logging_through_a_server_that_is_stopped_and_restarted_loses_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name, value in tracking_store.HTTP_ENV_DEFAULTS.items():
        monkeypatch.setenv(name, value)  # as StageRun sets them: MLflow's own retries give up within seconds
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    store, port = f"sqlite:///{tmp_path / 'mlflow.db'}", free_port("127.0.0.1")
    log = tmp_path / "mlflow-server.log"
    restarted = threading.Event()
    with mlflow_server(store, "127.0.0.1", port, log) as uri:
        run = StageRun("search@x", experiment="outage", tracking_uri=uri, project_root=tmp_path).__enter__()
        run.log_metrics({"loss": 1.0}, step=1)
    # The server is down now (its whole process group stopped); it comes back while the stage logs.

    def restart():
        with mlflow_server(store, "127.0.0.1", port, log):
            restarted.set()
            while not done.is_set():
                time.sleep(0.2)
    done = threading.Event()
    server = threading.Thread(target=restart)
    server.start()
    try:
        run.log_metrics({"loss": 0.5}, step=2)  # unreachable until the restarted server answers: retried
        assert restarted.is_set()
        run.__exit__(None, None, None)
        history = run._client.get_metric_history(run.run_id, "loss")
        assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5)]
        assert run._client.get_run(run.run_id).info.status == "FINISHED"
    finally:
        done.set()
        server.join(timeout=120)
