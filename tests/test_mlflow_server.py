"""A tiny study logged to a real `mlflow server` on 127.0.0.1, read back through the client."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from ferbench import tracking
from tests.conftest import tiny_config
from tests.workflow_helpers import BIN, env, run_snakemake, write_config

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """Start `mlflow server` on 127.0.0.1; stop its whole process group by PID afterwards."""
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    process = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env(), start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("mlflow server did not start:\n"
                                   + (tmp_path / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def test_tiny_study_against_a_tracking_server(tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    workdir = tmp_path / "study"
    workdir.mkdir()
    config = tiny_config(Path("results"))
    config["mlflow"] = {"tracking_uri": mlflow_server, "experiment": "served"}
    write_config(workdir, config)
    run_snakemake(workdir)

    assert not (workdir / "results" / "mlflow.db").exists()  # nothing went to the local store
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("served")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get(tracking.ROLE_TAG) == "parent"]
    children = [r for r in runs if r.data.tags.get(tracking.ROLE_TAG) == "fold"]
    assert len(parents) == 1 and len(children) == 3
    assert {c.data.tags[tracking.PARENT_TAG] for c in children} == {parents[0].info.run_id}
    for child in children:
        assert "test_accuracy" in child.data.metrics
        names = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert "metrics.json" in names
