"""MLflow tracking: one run per fold, nested under one parent run per (dataset, protocol, model).

Runs are addressed by id through `MlflowClient`, never through the global "active run", so
jobs in separate processes can nest under a parent (the `mlflow.parentRunId` tag). A run is
created with the tags that identify it in the same request (`open_run`), and a job looks
for such a run before creating one: a job killed at any point and run again logs into the
run it started, and a rerun of the summary reuses its parent, instead of leaving orphans
and duplicates. What a rerun logs again (the epochs before a checkpoint, test metrics) is
skipped where the run already holds it, so the store ends as after an uninterrupted run.
SQLite allows one writer at a time: parallel fold jobs retry on "database is locked", and
on the dataset row two of them inserted at once.

What MLflow's UI reads is written as it expects: the experiment is marked as model training
(so the UI opens on its runs table), runs carry the source and git tags, the manifest is a
dataset input, each fold's selected weights are an MLflow model (`runs:/<fold run>/model`)
and a study's best fold is a version of a registered model.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import math
import os
import random
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np

PARENT_TAG = "mlflow.parentRunId"
STUDY_TAG = "ferbench.study"
ROLE_TAG = "ferbench.role"
#: A fold run's inputs and settings (jobs.train_fold's fingerprint): a rerun after a kill
#: continues the run with the same fingerprint, a changed config starts a new one.
FINGERPRINT_TAG = "ferbench.fingerprint"
CONFIG_TAG = "ferbench.config_hash"

#: MLflow's log_batch takes at most this many params per request.
PARAMS_PER_BATCH = 100

#: The experiment's kind as MLflow records it (its UI's ExperimentKind values): model
#: training, not GenAI. MLflow 3.17's UI opens on the pages of its GenAI/Model training
#: switch instead (`?workflowType=machine_learning`; the README says so).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
#: Name of each fold run's logged model: `runs:/<run id>/model`.
MODEL_NAME = "model"
#: Key of ferbench's record (labels, face options, model and recipe) in the model's metadata.
METADATA_KEY = "ferbench"


def resolve_uri(configured: str, results: str | Path) -> str:
    """Config value first, then MLFLOW_TRACKING_URI, then SQLite under the results folder."""
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return "sqlite:///" + str((Path(results) / "mlflow.db").resolve())


def use_store(uri: str):
    """An MlflowClient of store `uri`, which also becomes this process's tracking and
    registry store (MLflow exports both to subprocesses as MLFLOW_*_URI).

    mlflow.pytorch.log_model and the registry's create_model_version (which looks the logged
    model up) use the process-wide stores, whatever a client is given: without this,
    registering in a fresh process looked in ./mlflow.db, and a client given only a
    tracking URI took a registry another call had set.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


#: Errors another job's write causes, gone when the call is made again: SQLite's locks, and
#: the dataset row two fold jobs both found missing and both inserted (MLflow looks a
#: dataset up before adding it, not atomically; the second call finds the first's row).
TRANSIENT_ERRORS = ("locked", "unique constraint failed: datasets.")


def retry(fn, *args, attempts: int = 12, **kwargs):
    """Call fn, retrying with jittered backoff while it fails with a TRANSIENT_ERRORS one."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # sqlalchemy/mlflow wrap these errors in several types
            message = str(exc).lower()
            if not any(error in message for error in TRANSIENT_ERRORS) \
                    or attempt == attempts - 1:
                raise
            time.sleep(min(5.0, 0.2 * 2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


class Tracker:
    """A thin, retrying wrapper over MlflowClient for one experiment."""

    def __init__(self, uri: str, experiment: str, results: str | Path):
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        if uri.startswith("sqlite:"):  # seconds of imports on a busy node: not under the lock,
            import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  or fold jobs queue
        self.uri = uri
        with _store_lock(uri):
            self.client = use_store(uri)
            self.experiment_id = retry(self._experiment, experiment, Path(results))
            self.mark_experiment()

    def _experiment(self, name: str, results: Path) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = None
        if self.uri.startswith("sqlite:"):  # keep local artifacts beside the local store
            location = (results / "mlartifacts").resolve().as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location,
                                                 tags=EXPERIMENT_KIND)
        except Exception:  # another job created it first
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def mark_experiment(self) -> None:
        """Tag an experiment created before EXPERIMENT_KIND existed (or by hand) too."""
        experiment = retry(self.client.get_experiment, self.experiment_id)
        for key, value in EXPERIMENT_KIND.items():
            if experiment.tags.get(key) != value:
                retry(self.client.set_experiment_tag, self.experiment_id, key, value)

    def start_run(self, name: str, tags: dict, params: dict | None = None,
                  source: str = "") -> str:
        """A new run, its tags (and `source`'s: source_tags) set in the request that
        creates it."""
        tags = {**tags, **(source_tags(source) if source else {})}
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
                 unfinished_only: bool = False, source: str = "") -> str:
        """The run that `tags` identify, created with them (and `source`'s tags) if there is
        none yet; `params` it lacks are logged (a kill may have come between creating and
        logging)."""
        run_id = self.find_run(tags, unfinished_only)
        if run_id is None:
            return self.start_run(name, tags, params, source)
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

    def log_dataset(self, run_id: str, table, source: str, name: str, digest: str,
                    context: str = "training") -> None:
        """`table` as the run's dataset input (mlflow.data: name, digest, schema, profile),
        which the runs table's Dataset column shows; MLflow keeps one per name and digest,
        so a rerun adds none."""
        import mlflow.data
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        # MLflow registers its local-file source twice and warns of the ambiguity; its hint
        # on integer columns concerns model inputs, not a manifest's ids.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The specified dataset source can be")
            warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer")
            dataset = mlflow.data.from_pandas(table, source=source, name=name, digest=digest)
        retry(self.client.log_inputs, run_id,
              datasets=[DatasetInput(dataset._to_mlflow_entity(),
                                     [InputTag(MLFLOW_DATASET_CONTEXT, context)])])

    def log_datasets_of(self, source_run: str, run_id: str) -> None:
        """`source_run`'s dataset inputs as `run_id`'s too: a parent run shows its folds'
        manifest in the runs table's Dataset column, where the collapsed folds hide it."""
        inputs = retry(self.client.get_run, source_run).inputs.dataset_inputs
        if inputs:
            retry(self.client.log_inputs, run_id, datasets=list(inputs))

    @contextlib.contextmanager
    def system_metrics(self, run_id: str, interval_s: float):
        """MLflow's CPU, memory, disk, network (and GPU) metrics of this process's machine
        while the block runs, every `interval_s` seconds; 0 logs none."""
        if not interval_s:
            yield
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s,
                                       resume_logging=True, tracking_uri=self.uri)
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()

    def logged_model(self, run_id: str) -> str | None:
        """`models:/<id>` of the run's finished MLflow model, if it has one."""
        run = retry(self.client.get_run, run_id)
        found = retry(self.client.search_logged_models, [run.info.experiment_id],
                      f"name = '{MODEL_NAME}' and source_run_id = '{run_id}'")
        ready = [m for m in found if str(m.status) in ("READY", "LoggedModelStatus.READY")]
        return f"models:/{ready[0].model_id}" if ready else None

    def log_model(self, run_id: str, network, record: dict, example: np.ndarray) -> str:
        """`network` as the run's MLflow model (torch.export's pt2: a graph and weights,
        no pickled code), its signature and input example a batch of face tensors as the
        network takes them, and `record` (jobs.save_model's fields but the weights) as
        metadata. Returns its `models:/<id>` URI; a rerun finds the one it logged."""
        found = self.logged_model(run_id)
        if found:
            return found
        import mlflow
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        with torch.no_grad():
            output = network(torch.from_numpy(example)).numpy()

        def log() -> str:
            with mlflow.start_run(run_id=run_id, log_system_metrics=False):
                info = mlflow.pytorch.log_model(
                    network, name=MODEL_NAME, signature=infer_signature(example, output),
                    input_example=example, serialization_format="pt2",
                    metadata={METADATA_KEY: record},
                    pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
            return info.model_uri if info.model_uri.startswith("models:/") else \
                f"models:/{info.model_id}"

        return retry(log)

    def register(self, name: str, model_uri: str, run_id: str, description: str = "") -> int:
        """`model_uri` as a version of registered model `name`, which is created if missing;
        a rerun returns the version that already holds this model."""
        from mlflow.exceptions import MlflowException

        try:
            retry(self.client.create_registered_model, name, description=description)
        except MlflowException as exc:
            if "already exists" not in str(exc).lower():
                raise
        for version in retry(self.client.search_model_versions, f"name = '{name}'"):
            if version.source == model_uri:
                return int(version.version)
        version = retry(self.client.create_model_version, name, model_uri, run_id=run_id,
                        description=description,
                        model_id=model_uri.removeprefix("models:/"))
        return int(version.version)

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


@functools.lru_cache(maxsize=None)
def _git(*args: str) -> str:
    """A git command's output in ferbench's own checkout ('' outside one, or on failure);
    asked once per process, not for every run a job opens."""
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def git_commit() -> str:
    """The code version a run used ('unknown' outside a git checkout)."""
    return _git("rev-parse", "HEAD") or "unknown"


def source_tags(script: str) -> dict:
    """The tags MLflow's UI shows as a run's source, user and code version: the workflow
    script that created the run and the git commit, branch and remote of ferbench's
    checkout (none outside one)."""
    from mlflow.utils import mlflow_tags as names

    git = {names.MLFLOW_GIT_COMMIT: _git("rev-parse", "HEAD"),
           names.MLFLOW_GIT_BRANCH: _git("rev-parse", "--abbrev-ref", "HEAD"),
           names.MLFLOW_GIT_REPO_URL: _git("config", "--get", "remote.origin.url")}
    return {names.MLFLOW_SOURCE_NAME: script, names.MLFLOW_SOURCE_TYPE: "JOB",
            names.MLFLOW_USER: _user(), **{k: v for k, v in git.items() if v}}


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user with no passwd entry and no $USER
        return "unknown"
