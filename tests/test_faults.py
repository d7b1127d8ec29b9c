"""Faults the workflow survives, on the real workflow (Snakemake + MLflow, no mocks).

(a) a training job killed with SIGKILL mid-epoch resumes from its checkpoint and ends exactly
    where an uninterrupted run ends; (b) a corrupt image is counted, not fatal; parallel fold
    jobs share one SQLite MLflow store without losing or duplicating runs.
Covered elsewhere, not repeated here: (c) a malformed config stops before any job, naming the
key (tests/test_workflow.py::test_malformed_config_stops_before_any_job); (d) an archive
member escaping its folder is refused before anything is written
(tests/test_download.py::test_unsafe_archives_are_refused_before_anything_is_written and
::test_a_link_through_an_earlier_link_is_caught_while_extracting).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import ROOT, tiny_config
from tests.workflow_helpers import (BIN, assert_study_finished, env, mlflow_runs, run_snakemake,
                                    write_config)

pytestmark = pytest.mark.slow
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


def kill_at_first_checkpoint(workdir: Path, timeout: float = 600) -> Path:
    """Run the workflow one job at a time and SIGKILL its whole process group (Snakemake and
    the training job, as a node failure would) as soon as a fold has checkpointed an epoch.
    Returns the checkpoint that was left behind."""
    cmd = [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory",
           str(workdir), "--cores", "1"]
    process = subprocess.Popen(cmd, cwd=workdir, env=env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and process.poll() is None:
            found = sorted((workdir / STUDY).glob("deep_emotion/fold*/checkpoint.pt"))
            if found:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
                return found[0]
            time.sleep(0.02)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    pytest.fail(f"no training checkpoint appeared (snakemake exited {process.returncode})")


def test_a_training_job_killed_mid_epoch_resumes_and_matches_an_uninterrupted_run(
        tmp_path_factory):
    reference = tmp_path_factory.mktemp("uninterrupted")
    write_config(reference, long_training_config())
    run_snakemake(reference)

    workdir = tmp_path_factory.mktemp("killed")
    write_config(workdir, long_training_config())
    checkpoint = kill_at_first_checkpoint(workdir)
    at_kill = torch.load(checkpoint, weights_only=True)["state"]
    done = at_kill["epoch"]
    assert 1 <= done < EPOCHS, "the kill must land while the fold is still training"
    fold = int(re.search(r"fold(\d+)", checkpoint.parent.name).group(1))

    run_snakemake(workdir, "--unlock")  # the killed run left its lock behind
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
    for each in range(3):  # same seed, same CPU: identical results, fold by fold
        resumed, expected = fold_outputs(workdir, each), fold_outputs(reference, each)
        assert resumed[0] == expected[0], f"fold{each} metrics differ"
        pd.testing.assert_frame_equal(resumed[1].drop(columns="seconds"),
                                      expected[1].drop(columns="seconds"))
    # The resumed job kept logging into the MLflow run it started: no duplicate, no orphan.
    assert_study_finished(workdir / "results")


def test_a_corrupt_image_is_counted_and_the_study_still_finishes(tmp_path):
    write_config(tmp_path, tiny_config(Path("results")))
    raw = tmp_path / "results" / "synthetic" / "raw"
    run_snakemake(tmp_path, str(raw.relative_to(tmp_path)))
    manifest = pd.read_csv(raw / "manifest.csv", dtype=str, keep_default_na=False)
    frames = manifest["frame"].astype(int)
    broken = manifest["image"][frames == frames.max()].iloc[0]  # an apex frame, which the
    # protocol trains and tests on, so a face missing here would break the folds
    (raw / broken).write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(512))

    run_snakemake(tmp_path)

    stats = json.loads((tmp_path / "results" / "synthetic" / "detection.json").read_text())
    assert stats["corrupt"] == 1 and stats["images"] == len(manifest)
    faces = pd.read_csv(tmp_path / "results" / "synthetic" / "faces" / "faces.csv",
                        dtype=str, keep_default_na=False)
    row = faces[faces["image"] == broken]
    assert list(row["outcome"]) == ["corrupt"] and list(row["face_index"]) == ["-1"]
    assert "corrupt" in (tmp_path / "results" / "report.html").read_text()
    assert_study_finished(tmp_path / "results")


def test_parallel_fold_jobs_log_every_run_exactly_once(tmp_path):
    config = tiny_config(Path("results"))
    config["models"]["deep_emotion"].update(epochs=6, patience=6)
    write_config(tmp_path, config)
    # Prepare every fold first, so that the three training jobs become ready together and run
    # side by side (otherwise each starts when its fold's augment job ends, and short ones
    # need not overlap).
    run_snakemake(tmp_path, "--until", "augment")
    run_snakemake(tmp_path, cores=3)

    results = tmp_path / "results"
    assert_study_finished(results)
    parents, children = mlflow_runs(results)
    assert len(parents) + len(children) == 4
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{results.resolve() / 'mlflow.db'}")
    spans = []
    for child in children:
        steps = client.get_metric_history(child.info.run_id, "val_acc")
        assert sorted(m.step for m in steps) == list(range(1, 7)), "lost or repeated epochs"
        spans.append((min(m.timestamp for m in steps), max(m.timestamp for m in steps)))
    # The folds really trained concurrently, so their writes contended for the SQLite file.
    overlapping = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1:]
                   if a[0] <= b[1] and b[0] <= a[1]]
    assert overlapping, f"fold training never overlapped: {spans}"
