"""Faults the workflow survives, on the real workflow (Snakemake + MLflow, no mocks).

(a) a training job killed with SIGKILL mid-epoch resumes from its checkpoint and ends exactly
    where an uninterrupted run ends; (a2) a study killed at three points (during training,
    between training and evaluation, during the summary) ends with the MLflow store an
    uninterrupted run leaves: one parent, one finished run per fold, nothing RUNNING, the
    same metrics; (b) a corrupt image is counted, not fatal; parallel fold jobs share one
    SQLite MLflow store without losing or duplicating runs (the uninterrupted reference's folds
    train side by side).
All three runs start from copies of one prepared study (faces detected, one of them
from a corrupt image, folds and augmented faces made): the faults are in what follows.
Covered elsewhere, not repeated here: (c) a malformed config stops before any job, naming the
key (tests/test_workflow.py::test_malformed_config_stops_before_any_job); (d) an archive
member escaping its folder is refused before anything is written
(tests/test_download.py::test_unsafe_archives_are_refused_before_anything_is_written and
::test_a_link_through_an_earlier_link_is_caught_while_extracting); a damaged checkpoint
(tests/test_checkpoints.py), a crafted model.pt (tests/test_untrusted_files.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from ferbench import tracking
from tests.conftest import TINY_FOLDS, tiny_config
from tests.workflow_helpers import (assert_study_finished, env, mlflow_client, mlflow_runs,
                                    run_snakemake, snakemake_command, write_config)

pytestmark = pytest.mark.slow(minutes=8)
STUDY = Path("results") / "synthetic" / "subject_5fold"
EPOCHS = 12


def long_training_config() -> dict:
    """The tiny study with enough epochs that a kill lands while a fold is still training."""
    config = tiny_config(Path("results"))
    config["models"]["deep_emotion"].update(epochs=EPOCHS, patience=EPOCHS)
    return config


def fold_outputs(workdir: Path, fold: int) -> tuple[dict, pd.DataFrame]:
    """A fold's metrics (without the run id, which differs between stores) and history."""
    folder = workdir / STUDY / "deep_emotion" / f"fold{fold}"
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics.pop("run_id")
    return metrics, pd.read_csv(folder / "history.csv")


def kill_when(workdir: Path, landed, timeout: float = 900):
    """Run the workflow one job at a time and SIGKILL its whole process group (Snakemake and
    the running job, as a node failure would) as soon as `landed()` returns something true,
    which is returned."""
    cmd = snakemake_command(workdir, "--rerun-incomplete", cores=1)
    process = subprocess.Popen(cmd, cwd=workdir, env=env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and process.poll() is None:
            found = landed()
            if found:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
                run_snakemake(workdir, "--unlock")  # the killed run left its lock behind
                return found
            time.sleep(0.01)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    pytest.fail(f"the kill never landed (snakemake exited {process.returncode})")


def first_checkpoint(workdir: Path) -> Path | None:
    return next(iter(sorted((workdir / STUDY).glob("deep_emotion/fold*/checkpoint.pt"))), None)


def trained_not_evaluated(workdir: Path) -> Path | None:
    """A fold whose evaluation job has just started (its log is open) and written nothing.

    Snakemake starts it only once the training job has finished and been recorded as
    complete; a training job's own last lines (run.json written, checkpoint removed) are
    still inside that job, and a kill there makes the rerun train the fold again."""
    logs = workdir / "results" / "logs" / "evaluate" / STUDY.relative_to("results")
    for log in sorted(logs.glob("deep_emotion/fold*.log")):
        folder = workdir / STUDY / "deep_emotion" / log.stem
        if (folder / "run.json").is_file() and not (folder / "metrics.json").exists():
            return folder
    return None


def running_parent(workdir: Path) -> str | None:
    """Id of a parent run the summary job has created and not yet finished, read straight
    from the SQLite file (an MLflow client per poll would be far too slow)."""
    database = workdir / "results" / "mlflow.db"
    if not database.is_file():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True,
                                                timeout=0.05)) as db:
            row = db.execute(
                "SELECT runs.run_uuid FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid "
                "WHERE tags.key = ? AND tags.value = 'parent' AND runs.status = 'RUNNING'",
                (tracking.ROLE_TAG,)).fetchone()
    except sqlite3.OperationalError:  # locked by a writer, or tables not yet created
        return None
    return row[0] if row else None


def store_contents(results: Path) -> dict:
    """Every run of the store by (role, fold): status, params and each metric's full history
    as (step, value) pairs; wall-clock values (`seconds`, MLflow's `system/` metrics) and the
    ids that name runs differ between stores and are left out."""
    client = mlflow_client(results)
    experiment = client.get_experiment_by_name("ferbench")
    contents = {}
    for run in client.search_runs([experiment.experiment_id]):
        key = (run.data.tags[tracking.ROLE_TAG], run.data.tags.get("fold"))
        assert key not in contents, f"two runs for {key}"
        contents[key] = {
            "status": run.info.status, "params": run.data.params,
            "metrics": {name: sorted((m.step, m.value) for m in
                                     client.get_metric_history(run.info.run_id, name))
                        for name in run.data.metrics
                        if name != "seconds" and not name.startswith("system/")}}
    return contents


def corrupt_an_apex_image(raw: Path) -> str:
    """Overwrite one apex frame (which the protocol trains and tests on, so a face missing
    there would break the folds) with a PNG header and noise; its manifest name."""
    manifest = pd.read_csv(raw / "manifest.csv", dtype=str, keep_default_na=False)
    frames = manifest["frame"].astype(int)
    broken = manifest["image"][frames == frames.max()].iloc[0]
    (raw / broken).write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(512))
    return broken


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, str]:
    """The long-training study up to its training jobs, one raw image corrupted before face
    detection: (its working folder, the corrupt image's name). Each run below starts from a
    copy, Snakemake's records (.snakemake) included, so none of them redoes this part."""
    workdir = tmp_path_factory.mktemp("prepared")
    write_config(workdir, long_training_config())
    raw = workdir / "results" / "synthetic" / "raw"
    run_snakemake(workdir, str(raw.relative_to(workdir)))
    broken = corrupt_an_apex_image(raw)
    # The folds and every fold's augmented faces: the training jobs become ready together.
    run_snakemake(workdir, "--until", "augment")
    assert not (workdir / "results" / "mlflow.db").exists()  # each copy starts its own store
    return workdir, broken


def copy_of(workdir: Path, tmp_path_factory, name: str) -> Path:
    """A fresh copy of a study's working folder, mtimes kept (Snakemake reads them), under a
    new temporary folder called `name`."""
    copy = tmp_path_factory.mktemp(name) / "study"
    shutil.copytree(workdir, copy, symlinks=True)
    return copy


@pytest.fixture(scope="module")
def uninterrupted(prepared, tmp_path_factory) -> Path:
    """The prepared study run to the end without faults: what every killed run must match.

    Its folds train side by side (their training jobs are ready together) and share one
    SQLite MLflow store."""
    reference = copy_of(prepared[0], tmp_path_factory, "uninterrupted")
    run_snakemake(reference, cores=3)
    return reference


def test_a_training_job_killed_mid_epoch_resumes_and_matches_an_uninterrupted_run(
        prepared, uninterrupted, tmp_path_factory):
    reference = uninterrupted
    workdir = copy_of(prepared[0], tmp_path_factory, "killed")
    checkpoint = kill_when(workdir, lambda: first_checkpoint(workdir))
    at_kill = torch.load(checkpoint, weights_only=True)["state"]
    done = at_kill["epoch"]
    assert 1 <= done < EPOCHS, "the kill must land while the fold is still training"
    fold = int(re.search(r"fold(\d+)", checkpoint.parent.name).group(1))

    run_snakemake(workdir, "--rerun-incomplete")

    log = (workdir / "results" / "logs" / "train" / "synthetic" / "subject_5fold" /
           "deep_emotion" / f"fold{fold}.log").read_text()
    assert f"resumed from epoch {done} of {EPOCHS}" in log
    metrics, history = fold_outputs(workdir, fold)
    assert list(history["epoch"]) == list(range(1, EPOCHS + 1))
    # Epochs before the kill were not retrained: their rows, wall-clock seconds included,
    # are the ones the checkpoint held.
    before = pd.DataFrame(at_kill["history"])
    pd.testing.assert_frame_equal(history.iloc[:done].reset_index(drop=True), before,
                                  check_exact=False, atol=1e-5, check_dtype=False)
    for each in range(TINY_FOLDS):  # same seed, same CPU: identical results, fold by fold
        resumed, expected = fold_outputs(workdir, each), fold_outputs(reference, each)
        assert resumed[0] == expected[0], f"fold{each} metrics differ"
        pd.testing.assert_frame_equal(resumed[1].drop(columns="seconds"),
                                      expected[1].drop(columns="seconds"))
    # The resumed job kept logging into the MLflow run it started: no duplicate, no orphan.
    assert_study_finished(workdir / "results")


def test_a_study_killed_at_three_points_leaves_the_store_of_an_uninterrupted_run(
        prepared, uninterrupted, tmp_path_factory):
    workdir = copy_of(prepared[0], tmp_path_factory, "killed-thrice")

    checkpoint = kill_when(workdir, lambda: first_checkpoint(workdir))
    assert torch.load(checkpoint, weights_only=True)["state"]["epoch"] < EPOCHS
    trained = kill_when(workdir, lambda: trained_not_evaluated(workdir))
    assert not (trained / "metrics.json").exists()
    trained_at = (trained / "model.pt").stat().st_mtime_ns
    orphan = kill_when(workdir, lambda: running_parent(workdir))
    run_snakemake(workdir, "--rerun-incomplete")
    # The fold killed between training and evaluation was evaluated, not trained again.
    assert (trained / "model.pt").stat().st_mtime_ns == trained_at

    results = workdir / "results"
    assert_study_finished(results)  # one parent, one FINISHED run per fold, nested under it
    killed, expected = store_contents(results), store_contents(uninterrupted / "results")
    assert sorted(killed) == sorted(expected) == [
        *(("fold", str(fold)) for fold in range(TINY_FOLDS)), ("parent", None)]
    assert {run["status"] for run in killed.values()} == {"FINISHED"}, "RUNNING leftovers"
    assert mlflow_runs(results)[0][0].info.run_id == orphan  # the rerun reused its parent
    for key in expected:
        assert killed[key]["params"] == expected[key]["params"], key
        # Every epoch once, every test and summary metric once, with the same values.
        assert killed[key]["metrics"] == expected[key]["metrics"], key
    for fold in range(TINY_FOLDS):
        assert fold_outputs(workdir, fold)[0] == fold_outputs(uninterrupted, fold)[0]


def test_a_corrupt_image_is_counted_and_the_study_still_finishes(prepared, uninterrupted):
    broken = prepared[1]
    results = uninterrupted / "results"
    manifest = pd.read_csv(results / "synthetic" / "raw" / "manifest.csv")
    stats = json.loads((results / "synthetic" / "detection.json").read_text())
    assert stats["corrupt"] == 1 and stats["images"] == len(manifest)
    faces = pd.read_csv(results / "synthetic" / "faces" / "faces.csv", dtype=str,
                        keep_default_na=False)
    row = faces[faces["image"] == broken]
    assert list(row["outcome"]) == ["corrupt"] and list(row["face_index"]) == ["-1"]
    assert "corrupt" in (results / "report.html").read_text()
    assert_study_finished(results)


def test_parallel_fold_jobs_log_every_run_exactly_once(uninterrupted):
    results = uninterrupted / "results"
    assert_study_finished(results)
    parents, children = mlflow_runs(results)
    assert len(parents) + len(children) == 1 + TINY_FOLDS
    client = mlflow_client(results)
    spans = []
    for child in children:
        steps = client.get_metric_history(child.info.run_id, "val_acc")
        assert sorted(m.step for m in steps) == list(range(1, EPOCHS + 1)), \
            "lost or repeated epochs"
        spans.append((min(m.timestamp for m in steps), max(m.timestamp for m in steps)))
    # The folds really trained concurrently, so their writes contended for the SQLite file.
    overlapping = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1:]
                   if a[0] <= b[1] and b[0] <= a[1]]
    assert overlapping, f"fold training never overlapped: {spans}"
