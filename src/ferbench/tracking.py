"""MLflow tracking: one run per fold, nested under one parent run per (dataset, protocol, model).

Runs are addressed by id through `MlflowClient`, never through the global "active run", so
a resumed training job keeps logging into the run it started and jobs in separate processes
can nest under a parent (the `mlflow.parentRunId` tag). SQLite allows one writer at a time:
parallel fold jobs retry on "database is locked".
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import time
from pathlib import Path

PARENT_TAG = "mlflow.parentRunId"
STUDY_TAG = "ferbench.study"
ROLE_TAG = "ferbench.role"


def resolve_uri(configured: str, results: str | Path) -> str:
    """Config value first, then MLFLOW_TRACKING_URI, then SQLite under the results folder."""
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return "sqlite:///" + str((Path(results) / "mlflow.db").resolve())


def retry(fn, *args, attempts: int = 12, **kwargs):
    """Call fn, retrying with jittered backoff while SQLite reports a lock."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # sqlalchemy/mlflow wrap the lock error in several types
            if "locked" not in str(exc).lower() or attempt == attempts - 1:
                raise
            time.sleep(min(5.0, 0.2 * 2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


class Tracker:
    """A thin, retrying wrapper over MlflowClient for one experiment."""

    def __init__(self, uri: str, experiment: str, results: str | Path):
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        from mlflow.tracking import MlflowClient

        self.uri = uri
        with _store_lock(uri):
            self.client = MlflowClient(tracking_uri=uri)
            self.experiment_id = retry(self._experiment, experiment, Path(results))

    def _experiment(self, name: str, results: Path) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = None
        if self.uri.startswith("sqlite:"):  # keep local artifacts beside the local store
            location = (results / "mlartifacts").resolve().as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except Exception:  # another job created it first
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def start_run(self, name: str, tags: dict, params: dict | None = None) -> str:
        run = retry(self.client.create_run, self.experiment_id, run_name=name,
                    tags={k: str(v) for k, v in tags.items()})
        run_id = run.info.run_id
        for key, value in sorted((params or {}).items()):
            retry(self.client.log_param, run_id, key, str(value)[:6000])
        return run_id

    def log_metrics(self, run_id: str, metrics: dict, step: int | None = None) -> None:
        for key, value in metrics.items():
            if value is not None:
                retry(self.client.log_metric, run_id, key, float(value), step=step or 0)

    def log_artifact(self, run_id: str, path: str | Path, folder: str | None = None) -> None:
        retry(self.client.log_artifact, run_id, str(path), folder)

    def set_tag(self, run_id: str, key: str, value) -> None:
        retry(self.client.set_tag, run_id, key, str(value))

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        retry(self.client.set_terminated, run_id, status)


def _store_lock(uri: str):
    """A cross-process lock beside a local SQLite store while it is first opened.

    Opening a new store creates its tables; parallel fold jobs doing that at once fail with
    "table ... already exists". Server URIs need no lock: the server serialises writes.
    """
    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    from filelock import FileLock

    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(database) + ".lock", timeout=600)


def git_commit() -> str:
    """The code version a run used ('unknown' outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
