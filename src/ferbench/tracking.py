"""MLflow tracking: one run per fold, nested under one parent run per (dataset, protocol, model).

Runs are addressed by id through `MlflowClient`, never through the global "active run", so
jobs in separate processes can nest under a parent (the `mlflow.parentRunId` tag). A run is
created with the tags that identify it in the same request (`open_run`), and a job looks
for such a run before creating one: a job killed at any point and run again logs into the
run it started, and a rerun of the summary reuses its parent, instead of leaving orphans
and duplicates. What a rerun logs again (the epochs before a checkpoint, test metrics) is
skipped where the run already holds it, so the store ends as after an uninterrupted run.
SQLite allows one writer at a time: parallel fold jobs retry on "database is locked".
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import subprocess
import time
from pathlib import Path

PARENT_TAG = "mlflow.parentRunId"
STUDY_TAG = "ferbench.study"
ROLE_TAG = "ferbench.role"
#: A fold run's inputs and settings (jobs.train_fold's fingerprint): a rerun after a kill
#: continues the run with the same fingerprint, a changed config starts a new one.
FINGERPRINT_TAG = "ferbench.fingerprint"
CONFIG_TAG = "ferbench.config_hash"

#: MLflow's log_batch takes at most this many params per request.
PARAMS_PER_BATCH = 100


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

        if uri.startswith("sqlite:"):  # seconds of imports on a busy node: not under the lock,
            import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  or fold jobs queue
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
        """A new run, its tags set in the same request that creates it."""
        run = retry(self.client.create_run, self.experiment_id, run_name=name,
                    tags={k: str(v) for k, v in tags.items()})
        self.log_params(run.info.run_id, params or {})
        return run.info.run_id

    def find_run(self, tags: dict, unfinished_only: bool = False) -> str | None:
        """The earliest run carrying every one of `tags` (optionally: not yet FINISHED)."""
        query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in sorted(tags.items()))
        runs = retry(self.client.search_runs, [self.experiment_id], query,
                     order_by=["attributes.start_time ASC"])
        found = [run for run in runs if not unfinished_only or run.info.status != "FINISHED"]
        return found[0].info.run_id if found else None

    def open_run(self, name: str, tags: dict, params: dict | None = None,
                 unfinished_only: bool = False) -> str:
        """The run that `tags` identify, created with them if there is none yet; `params`
        it lacks are logged (a kill may have come between creating and logging)."""
        run_id = self.find_run(tags, unfinished_only)
        if run_id is None:
            return self.start_run(name, tags, params)
        self.log_params(run_id, params or {})
        return run_id

    def log_params(self, run_id: str, params: dict) -> None:
        """Params the run does not hold yet, in batches (MLflow params never change)."""
        from mlflow.entities import Param

        held = retry(self.client.get_run, run_id).data.params if params else {}
        missing = [Param(key, str(value)[:6000]) for key, value in sorted(params.items())
                   if key not in held]
        for i in range(0, len(missing), PARAMS_PER_BATCH):
            retry(self.client.log_batch, run_id, params=missing[i:i + PARAMS_PER_BATCH])

    def log_metrics(self, run_id: str, metrics: dict, step: int | None = None) -> None:
        """One step's metrics in one request, so a kill never leaves half of them."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step or 0)
                 for key, value in metrics.items() if value is not None]
        if batch:
            retry(self.client.log_batch, run_id, metrics=batch)

    def log_new_metrics(self, run_id: str, metrics: dict) -> None:
        """Step-0 metrics the run does not already hold with these values: a job rerun
        after a kill adds no second entry."""
        held = retry(self.client.get_run, run_id).data.metrics
        self.log_metrics(run_id, {key: value for key, value in metrics.items()
                                  if value is not None and not _same(held.get(key), value)})

    def logged_steps(self, run_id: str, key: str) -> set[int]:
        """Steps at which the run already holds metric `key`."""
        return {metric.step for metric in retry(self.client.get_metric_history, run_id, key)}

    def log_artifact(self, run_id: str, path: str | Path, folder: str | None = None) -> None:
        retry(self.client.log_artifact, run_id, str(path), folder)

    def set_tag(self, run_id: str, key: str, value) -> None:
        retry(self.client.set_tag, run_id, key, str(value))

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        retry(self.client.set_terminated, run_id, status)


def _same(held: float | None, value) -> bool:
    """Whether a logged metric already has `value` (NaN, e.g. F1 of an absent class, too)."""
    return held is not None and (held == float(value) or
                                 (math.isnan(held) and math.isnan(float(value))))


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
