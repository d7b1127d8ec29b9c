"""Tracker on a real local MLflow store: runs found by their tags, reruns that add nothing."""

from __future__ import annotations

import pytest

from ferbench import tracking

TAGS = {tracking.STUDY_TAG: "synthetic/subject_5fold/deep_emotion", "fold": "0",
        tracking.ROLE_TAG: "fold", tracking.FINGERPRINT_TAG: "abc"}


@pytest.fixture
def tracker(tmp_path):
    return tracking.Tracker("sqlite:///" + str(tmp_path / "mlflow.db"), "tracking-test",
                            tmp_path)


def test_a_run_is_found_by_its_tags_until_it_finishes(tracker):
    first = tracker.open_run("fold0", TAGS, {"lr": 0.1}, unfinished_only=True)
    # A rerun after a kill: same run, and the params it had are not logged again.
    assert tracker.open_run("fold0", TAGS, {"lr": 0.1, "n_val": 4}, unfinished_only=True) \
        == first
    assert tracker.client.get_run(first).data.params == {"lr": "0.1", "n_val": "4"}
    assert tracker.open_run("fold1", {**TAGS, "fold": "1"}, unfinished_only=True) != first
    tracker.finish(first)
    again = tracker.open_run("fold0", TAGS, unfinished_only=True)  # retrained: a new run
    assert again != first
    assert tracker.open_run("fold0", TAGS) == first  # the earliest, finished or not


def test_reruns_add_no_second_metric_entry(tracker):
    run_id = tracker.start_run("parent", {tracking.ROLE_TAG: "parent"})
    metrics = {"accuracy_mean": 0.5, "accuracy_std": 0.125, "test_f1_fear": float("nan")}
    for _ in range(2):
        tracker.log_new_metrics(run_id, metrics)
    tracker.log_new_metrics(run_id, {"accuracy_mean": 0.75})  # a changed value is logged
    history = tracker.client.get_metric_history(run_id, "accuracy_mean")
    assert [m.value for m in history] == [0.5, 0.75]
    assert len(tracker.client.get_metric_history(run_id, "accuracy_std")) == 1
    assert len(tracker.client.get_metric_history(run_id, "test_f1_fear")) == 1
    tracker.log_metrics(run_id, {"val_acc": 0.25, "val_loss": 1.0}, step=3)
    assert tracker.logged_steps(run_id, "val_acc") == {3}


def test_the_ui_sees_model_training_a_source_and_one_dataset_input(tracker, tmp_path):
    import pandas as pd

    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    tracker.client.delete_experiment_tag(tracker.experiment_id, "mlflow.experimentKind")
    again = tracking.Tracker(tracker.uri, "tracking-test", tmp_path)  # one made by hand
    assert again.client.get_experiment(again.experiment_id).tags[
        "mlflow.experimentKind"] == "custom_model_development"

    run_id = tracker.open_run("fold0", TAGS, source="workflow/scripts/train.py")
    tags = tracker.client.get_run(run_id).data.tags
    assert tags["mlflow.source.name"] == "workflow/scripts/train.py"
    assert tags["mlflow.source.type"] == "JOB"
    assert tags["mlflow.source.git.commit"] == tracking.git_commit()
    assert tracker.open_run("fold0", TAGS, unfinished_only=True) == run_id  # not identity

    manifest = pd.DataFrame({"image": ["a.png", "b.png"], "label": ["fear", "neutral"]})
    for _ in range(2):  # a rerun
        tracker.log_dataset(run_id, manifest, str(tmp_path / "manifest.csv"), "synthetic",
                            "0123456789abcdef")
    (dataset,) = [d.dataset for d in tracker.client.get_run(run_id).inputs.dataset_inputs]
    assert (dataset.name, dataset.digest) == ("synthetic", "0123456789abcdef")
    assert '"image"' in dataset.schema and "num_rows" in dataset.profile


def _log_datasets_in_step(uri: str, root: str, barrier, rounds: int, errors) -> None:
    """One "fold job": its own runs, each given round's dataset the moment the others are."""
    import pandas as pd

    tracker = tracking.Tracker(uri, "tracking-test", root)
    runs = [tracker.start_run(f"fold-{k}", {"round": str(k)}) for k in range(rounds)]
    manifest = pd.DataFrame({"image": ["a.png"], "label": ["fear"]})
    for k, run_id in enumerate(runs):
        barrier.wait()
        try:
            tracker.log_dataset(run_id, manifest, f"{root}/manifest.csv", "synthetic",
                                f"{k:016x}")
        except Exception as exc:  # reported in the parent, with the first message
            errors.put(str(exc)[:300])


def test_jobs_adding_one_new_dataset_at_once_each_get_it(tracker, tmp_path):
    """Fold jobs log the same new manifest concurrently: MLflow looks the dataset up, then
    inserts it, so two of them can insert the same row. Each must still get its input."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    jobs, rounds = 4, 8
    barrier, errors = context.Barrier(jobs), context.Queue()
    workers = [context.Process(target=_log_datasets_in_step,
                               args=(tracker.uri, str(tmp_path), barrier, rounds, errors))
               for _ in range(jobs)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    failures = [errors.get() for _ in range(errors.qsize())]
    assert not failures, f"{len(failures)} of {jobs * rounds} failed, e.g. {failures[0]}"
    runs = tracker.client.search_runs([tracker.experiment_id])
    assert len(runs) == jobs * rounds
    for run in runs:
        (dataset,) = [d.dataset for d in run.inputs.dataset_inputs]
        assert dataset.digest == f"{int(run.data.tags['round']):016x}"


def test_system_metrics_are_logged_while_the_block_runs(tracker):
    import time

    run_id = tracker.start_run("fold0", TAGS)
    with tracker.system_metrics(run_id, interval_s=0.5):
        time.sleep(1.6)  # about three samples
    logged = set(tracker.client.get_run(run_id).data.metrics)
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} \
        <= logged
    quiet = tracker.start_run("fold1", {**TAGS, "fold": "1"})
    with tracker.system_metrics(quiet, interval_s=0):
        time.sleep(0.6)
    assert not tracker.client.get_run(quiet).data.metrics
