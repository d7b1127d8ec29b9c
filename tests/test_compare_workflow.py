"""The compare and audit stages in the real workflow (Snakemake + MLflow, no mocks): two
models on the same subject-independent folds, and the audit of an image-level protocol with
`dedupe: drop` (asked for by path: no model is trained on it)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import tiny_config
from tests.workflow_helpers import mlflow_runs, run_snakemake, write_config

pytestmark = pytest.mark.slow(minutes=5)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("compare")
    config = tiny_config(Path("results"))
    # Three folds, not the tiny study's two: the paired interval over folds needs the spread.
    config["protocols"]["subject_5fold"]["folds"] = 3
    config["models"]["deepfer"] = {"epochs": 2, "patience": 2, "batch_size": 32, "width": 0.25}
    # Frames of one sequence on both sides of an image-level split are near-duplicates; a
    # loose distance makes sure some are caught on this tiny dataset.
    config["protocols"]["image_3fold"] = {"kind": "image_kfold", "folds": 3,
                                          "val_fraction": 0.34, "frames": "all",
                                          "dedupe": "drop", "duplicate_distance": 40}
    config["studies"][0]["models"] = ["deepfer", "deep_emotion"]
    write_config(workdir, config)
    run_snakemake(workdir, "all", "results/synthetic/image_3fold/audit.json", timeout=2400)
    return workdir / "results"


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_models_on_the_same_folds_are_compared_in_the_report_and_in_mlflow(results):
    stats = read(results / "synthetic" / "subject_5fold" / "statistics.json")
    (pair,) = stats["pairs"]
    assert (pair["a"], pair["b"], pair["folds"]) == ("deepfer", "deep_emotion", 3)
    difference = pair["accuracy"]
    assert difference["low"] < difference["mean"] < difference["high"]
    assert 0 <= difference["p"] <= 1 and 0 <= pair["mcnemar"]["p"] <= 1
    summaries = {m: read(results / "synthetic" / "subject_5fold" / m / "summary.json")
                 for m in ("deepfer", "deep_emotion")}
    for model, summary in summaries.items():
        assert stats["models"][model]["accuracy"]["mean"] == pytest.approx(
            summary["accuracy_mean"])
        assert stats["models"][model]["calibration"]["faces"] == sum(
            f["n_test"] for f in summary["folds"])
    parents, _ = mlflow_runs(results)
    by_id = {run.info.run_id: run for run in parents}
    deepfer = by_id[summaries["deepfer"]["mlflow_run_id"]].data.metrics
    assert deepfer["vs_deep_emotion_accuracy_diff"] == pytest.approx(difference["mean"])
    assert deepfer["accuracy_ci_low"] == pytest.approx(
        stats["models"]["deepfer"]["accuracy"]["low"])
    html = (results / "report.html").read_text()
    table = html.split("<h3>Paired comparisons</h3>")[1].split("</table>")[0]
    assert "deepfer − deep_emotion" in table and f"{100 * difference['mean']:+.2f}" in table
    assert html.count("reliability diagram, ") == 2


def test_the_leak_audit_runs_on_every_protocol_and_drop_sets_duplicates_aside(results):
    honest = read(results / "synthetic" / "subject_5fold" / "audit.json")
    # different identities' crops are never near-duplicates of each other
    assert honest["near_duplicates"] == 0 and honest["test_faces"] > 0
    html = (results / "report.html").read_text()
    assert "synthetic / subject_5fold: test faces within 10 bits of a training face" in html
    leaky = read(results / "synthetic" / "image_3fold" / "audit.json")
    folds = pd.read_csv(results / "synthetic" / "image_3fold" / "folds.csv")
    duplicates = folds[folds["role"] == "duplicate"]
    assert leaky["near_duplicates"] == leaky["dropped"] == len(duplicates) > 0
    # every test face is either still tested or set aside, and some remain to test on
    remaining = folds[folds["role"] == "test"]
    assert len(remaining) + len(duplicates) == leaky["test_faces"] and len(remaining) > 0
