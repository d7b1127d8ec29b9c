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


#: Folds of the tiny study: two, the fewest that train side by side and compare fold by fold
#: (each fold adds three jobs, most of whose seconds are torch and MLflow imports).
TINY_FOLDS = 2


#: One held-out fold of the tiny synthetic set: of its six identities two test and one
#: validates; three train. For a study whose tests need no second fold.
HELD_OUT = {"kind": "held_out", "test_subjects": ["id00", "id01"], "val_subjects": ["id02"]}
HELD_OUT_FOLDS = 1


def tiny_protocol(config: dict, name: str, protocol: dict) -> None:
    """Replace the tiny study's protocol in `config` by `name`: its keys but the fold count,
    with `protocol`'s. The study names `name` itself."""
    tiny = config["protocols"].pop("subject_5fold")
    config["protocols"][name] = {**{k: v for k, v in tiny.items() if k != "folds"}, **protocol}


def tiny_config(results: Path, **overrides) -> dict:
    """The default study shrunk to run in well under a minute on one CPU core."""
    config = yaml.safe_load((ROOT / "params.yaml").read_text())
    config["results"] = str(results)
    config["datasets"]["synthetic"]["generate"] = {
        "identities": 6, "repetitions": 1, "frames": 4, "frame_size": [240, 180]}
    config["protocols"]["subject_5fold"].update(folds=TINY_FOLDS, val_fraction=0.34)
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


def pytest_collection_modifyitems(items):
    """Test files run longest first, by the `minutes` their `slow` marker declares (about
    what the file takes on CI's 2 cores). `make test` keeps this order (pytest-xdist's
    --no-loadscope-reorder), and each of its two processes is handed the next file as its
    own runs low. xdist's own order, most tests first, left the long studies (few tests
    each) for last, where one process ran the final study alone."""
    minutes: dict[Path, float] = {}
    for item in items:
        marker = item.get_closest_marker("slow")
        minutes[item.path] = max(minutes.get(item.path, 0), marker.kwargs.get("minutes", 0)
                                 if marker else 0)
    items.sort(key=lambda item: -minutes[item.path])  # stable: a file's tests keep their order


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
