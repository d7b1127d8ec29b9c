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
