"""A tiny study logged to a real `mlflow server` on 127.0.0.1, read back through the client:
runs, tags, dataset inputs, each fold's MLflow model and the registered best fold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ferbench import jobs, live, tracking, tracking_server
from ferbench import train as train_mod
from tests.conftest import TINY_FOLDS, tiny_config
from tests.workflow_helpers import env, run_snakemake, write_config

pytestmark = pytest.mark.slow(minutes=3)


@pytest.fixture
def mlflow_server(tmp_path):
    """Start `mlflow server` on 127.0.0.1; stop its whole process group by PID afterwards."""
    log = open(tmp_path / "server.log", "w")
    process, uri = tracking_server.launch(tmp_path / "server.db", tmp_path / "server-artifacts",
                                          "127.0.0.1", tracking_server.free_port("127.0.0.1"), log,
                                          env=env())
    try:
        yield uri
        # The server only stores runs: MLflow's job runner (huey consumers) is not started.
        commands = process_group(process.pid)
        assert any("uvicorn" in c for c in commands), commands
        assert not any("huey" in c for c in commands), commands
    finally:
        tracking_server.halt(process)
        log.close()


def process_group(group: int) -> list[str]:
    """The command lines of the live processes of a process group, read from /proc."""
    commands = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == group:  # pgrp, after state and ppid
                commands.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ")
                                .decode())
        except (OSError, IndexError):  # exited while being read
            continue
    return commands


def test_tiny_study_against_a_tracking_server(tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    workdir = tmp_path / "study"
    workdir.mkdir()
    config = tiny_config(Path("results"))
    config["mlflow"] = {"tracking_uri": mlflow_server, "experiment": "served",
                        "log_models": True}
    write_config(workdir, config)
    run_snakemake(workdir)

    assert not (workdir / "results" / "mlflow.db").exists()  # nothing went to the local store
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    experiment = client.get_experiment_by_name("served")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get(tracking.ROLE_TAG) == "parent"]
    children = [r for r in runs if r.data.tags.get(tracking.ROLE_TAG) == "fold"]
    assert len(parents) == 1 and len(children) == TINY_FOLDS
    assert {c.data.tags[tracking.PARENT_TAG] for c in children} == {parents[0].info.run_id}
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    results = workdir / "results"
    manifest = results / "synthetic" / "manifest.csv"
    for child in children:
        assert "test_accuracy" in child.data.metrics
        names = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert "metrics.json" in names
        assert child.data.tags["mlflow.source.name"] == "workflow/scripts/train.py"
        assert child.data.tags["mlflow.source.git.commit"] == tracking.git_commit()
        (dataset,) = [d.dataset for d in child.inputs.dataset_inputs]
        assert (dataset.name, dataset.digest) == ("synthetic",
                                                  jobs.file_sha256(manifest)[:16])
    # The parent row, the one the runs table shows with its folds collapsed, names it too.
    assert [d.dataset.digest for d in parents[0].inputs.dataset_inputs] == [dataset.digest]
    assert_registered_best_fold(client, mlflow_server, results, children)


def assert_registered_best_fold(client, uri: str, results: Path, children) -> None:
    """The study's best fold is version 1 of its registered model, which
    mlflow.pytorch.load_model and `ferbench live`'s loader read back as its model.pt."""
    import mlflow
    import mlflow.pytorch

    study = results / "synthetic" / "subject_5fold" / "deep_emotion"
    summary = json.loads((study / "summary.json").read_text())
    name = "ferbench-synthetic-subject_5fold-deep_emotion"
    assert summary["registered_model"] == {"name": name, "version": 1,
                                           "fold": summary["registered_model"]["fold"],
                                           "uri": f"models:/{name}/1"}
    best = max(summary["folds"], key=lambda f: (f["accuracy"], f["macro_f1"], -f["fold"]))
    assert summary["registered_model"]["fold"] == best["fold"]
    (version,) = client.search_model_versions(f"name = '{name}'")
    by_fold = {int(c.data.tags["fold"]): c.info.run_id for c in children}
    assert version.run_id == by_fold[best["fold"]]

    network, saved = jobs.load_model(study / f"fold{best['fold']}" / "model.pt")
    faces = np.load(results / "synthetic" / "faces" / "faces.npy")[:16]
    images = train_mod.Split.from_arrays(faces, np.zeros(len(faces), int),
                                         saved["input_size"]).images
    x = train_mod.as_input(images, torch.device("cpu"))
    mlflow.set_tracking_uri(uri)
    served = mlflow.pytorch.load_model(f"models:/{name}/1")
    with torch.no_grad():
        expected = network(x)
        torch.testing.assert_close(served(x), expected, rtol=1e-5, atol=1e-6)
        loaded = live.load_live_model(f"models:/{name}/1", torch.device("cpu"), uri)
        torch.testing.assert_close(loaded.network(x), expected, rtol=0, atol=0)
    assert loaded.labels == saved["labels"] and loaded.input_size == saved["input_size"]
