"""Shared fixtures: the repository root and a tiny-but-real study config."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
#: MLflow's process-wide stores, which it exports to subprocesses once they are set.
MLFLOW_STORE_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
#: The line between "indistinguishable" and "told apart" of the privacy tests' statistical
#: checks. Their samples come from the OS's CSPRNG, unseeded by design, so a check passes
#: by chance with probability 1 - p: at 1e-3, their nine checks failed a run about once in
#: 110 (one CI run did); at 1e-6 once in 100,000, while every leak control falls below it.
CHANCE_P = 1e-6

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def tiny_config(results: Path, **overrides) -> dict:
    """The default study shrunk to run in well under a minute on one CPU core."""
    config = yaml.safe_load((ROOT / "params.yaml").read_text())
    config["results"] = str(results)
    config["datasets"]["synthetic"]["generate"] = {
        "identities": 6, "repetitions": 1, "frames": 4, "frame_size": [240, 180]}
    config["protocols"]["subject_5fold"].update(folds=3, val_fraction=0.34)
    config["studies"] = [{"dataset": "synthetic", "protocol": "subject_5fold",
                          "models": ["deep_emotion"]}]
    config["models"] = {"deep_emotion": {"epochs": 2, "patience": 2, "batch_size": 32}}
    config["augment"]["copies"] = 1
    # A few seconds per fold (torch.export): logged only by the test that reads them back,
    # tests/test_mlflow_server.py.
    config["mlflow"]["log_models"] = False
    for key, value in overrides.items():
        config[key] = value
    return copy.deepcopy(config)


@pytest.fixture(autouse=True)
def no_process_wide_mlflow_store():
    """Each test ends with MLflow's process-wide stores unset: Tracker and the model loader
    set them (tracking.use_store), and a later test's client, or its subprocesses, took them."""
    yield
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    for variable in MLFLOW_STORE_VARIABLES:
        os.environ.pop(variable, None)


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture
def one_thread():
    """Tiny layers gain nothing from intra-op threads; on a loaded 2-core machine they cost 10x."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
