"""When the workflow starts its own MLflow server: only for jobs on other machines with no
store configured (the SLURM run through it is tests/test_slurm.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferbench import config as config_mod
from ferbench import tracking_server
from tests.conftest import tiny_config


@pytest.mark.parametrize("local, mlflow, environment, started", [
    (False, {}, None, True),                                    # a cluster, nothing set
    (True, {}, None, False),                                    # local jobs share SQLite
    (False, {"server": "never"}, None, False),                  # refused
    (False, {"tracking_uri": "http://host:5000"}, None, False),  # an external server
    (False, {}, "http://host:5000", False),                     # ... from the environment
])
def test_a_server_is_started_only_for_remote_jobs_without_a_store(
        monkeypatch, local, mlflow, environment, started):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if environment:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", environment)
    raw = tiny_config(Path("results"))
    raw["mlflow"] = mlflow
    assert tracking_server.wanted(config_mod.validate(raw), local) is started
