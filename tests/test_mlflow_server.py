"""A tiny study logged to a real `mlflow server` on 127.0.0.1, read back through the client."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferbench import tracking, tracking_server
from tests.conftest import tiny_config
from tests.workflow_helpers import env, run_snakemake, write_config

pytestmark = pytest.mark.slow


@pytest.fixture
def mlflow_server(tmp_path):
    """Start `mlflow server` on 127.0.0.1; stop its whole process group by PID afterwards."""
    log = open(tmp_path / "server.log", "w")
    process, uri = tracking_server.launch(tmp_path / "server.db", tmp_path / "server-artifacts",
                                          "127.0.0.1", tracking_server.free_port("127.0.0.1"), log,
                                          env=env())
    try:
        yield uri
    finally:
        tracking_server.halt(process)
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
