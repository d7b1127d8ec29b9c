"""The real workflow, end to end, on a tiny synthetic study (Snakemake + MLflow, no mocks)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from ferbench import paths, tracking
from tests.conftest import ROOT, TINY_FOLDS, tiny_config
from tests.workflow_helpers import (env, mlflow_client, mlflow_runs, render_in_chromium,
                                    run_snakemake, write_config)

pytestmark = pytest.mark.slow(minutes=5)
RULES = ("fetch", "ingest", "faces", "folds", "augment", "train", "evaluate", "summarize",
         "report")


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """The same tiny study run twice in two fresh folders; the second file has no `models:`
    block and gives the same recipe as the study's own `hyperparameters:`. The second run
    stops at what its tests compare: every fold's metrics (and what they are made from)."""
    runs = []
    for name in ("first", "second"):
        workdir = tmp_path_factory.mktemp(name)
        config = tiny_config(Path("results"))
        targets = []
        if name == "second":
            config["studies"][0]["hyperparameters"] = config.pop("models")
            targets = [paths.fill(paths.METRICS, config, dataset="synthetic",
                                  protocol="subject_5fold", model="deep_emotion", fold=fold)
                       for fold in range(TINY_FOLDS)]
        write_config(workdir, config)
        run_snakemake(workdir, *targets)
        runs.append(workdir / "results")
    return runs


def test_every_stage_produced_its_artifacts(tiny_runs):
    results = tiny_runs[0]
    study = results / "synthetic" / "subject_5fold"
    assert (results / "synthetic" / "manifest.csv").exists()
    assert (results / "synthetic" / "faces" / "faces.npy").exists()
    assert len(list((study / "augment").glob("fold*.npy"))) == TINY_FOLDS
    for fold in range(TINY_FOLDS):
        assert (study / "deep_emotion" / f"fold{fold}" / "model.pt").exists()
        assert not (study / "deep_emotion" / f"fold{fold}" / "checkpoint.pt").exists()
    summary = json.loads((study / "deep_emotion" / "summary.json").read_text())
    assert len(summary["folds"]) == TINY_FOLDS and summary["subject_independent"] is True
    html = (results / "report.html").read_text()
    assert "deep_emotion" in html and "data:image/png;base64" in html
    metrics = json.loads((results / "metrics.json").read_text())
    assert metrics["synthetic/subject_5fold/deep_emotion"]["accuracy_mean"] == pytest.approx(
        summary["accuracy_mean"], abs=1e-6)
    for rule in RULES:
        assert list((results / "benchmarks" / rule).rglob("*.tsv")), rule
        assert list((results / "logs" / rule).rglob("*.log")), rule


def test_detection_is_measured_against_ground_truth(tiny_runs):
    stats = json.loads((tiny_runs[0] / "synthetic" / "detection.json").read_text())
    assert stats["detector"] == "haar" and stats["images"] > 0
    assert stats["iou"]["n"] == stats["images"] - stats["corrupt"]
    assert stats["detection_rate"] > 0.8


def test_same_config_and_seed_give_identical_folds_and_metrics(tiny_runs):
    first, second = tiny_runs
    study = Path("synthetic") / "subject_5fold"
    assert (first / study / "folds.csv").read_bytes() == (second / study / "folds.csv").read_bytes()
    for fold in range(TINY_FOLDS):
        a = (first / study / "augment" / f"fold{fold}.npy").read_bytes()
        assert a == (second / study / "augment" / f"fold{fold}.npy").read_bytes()
        ma, mb = (json.loads((r / study / "deep_emotion" / f"fold{fold}" / "metrics.json")
                             .read_text()) for r in tiny_runs)
        ma.pop("run_id"), mb.pop("run_id")
        assert ma == mb


def test_mlflow_holds_one_nested_run_per_fold(tiny_runs):
    results = tiny_runs[0]
    client = mlflow_client(results)
    experiment = client.get_experiment_by_name("ferbench")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get(tracking.ROLE_TAG) == "parent"]
    children = [r for r in runs if r.data.tags.get(tracking.ROLE_TAG) == "fold"]
    assert len(parents) == 1 and len(children) == TINY_FOLDS
    parent = parents[0]
    summary = json.loads((results / "synthetic/subject_5fold/deep_emotion/summary.json").read_text())
    assert parent.data.metrics["accuracy_mean"] == pytest.approx(summary["accuracy_mean"])
    assert "accuracy_std" in parent.data.metrics
    for child in children:
        assert child.data.tags[tracking.PARENT_TAG] == parent.info.run_id
        assert child.info.status == "FINISHED"
        assert {"lr", "batch_size", "seed", "fold", "git_commit", "config_hash"} <= set(
            child.data.params)
        history = client.get_metric_history(child.info.run_id, "val_acc")
        assert len(history) == int(child.data.params["epochs"])
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"metrics.json", "history.csv", "predictions.csv"} <= artifacts


def test_a_study_without_models_trains_the_paper_defaults_under_its_own_block(tiny_runs):
    from ferbench.models import get

    _, folds = mlflow_runs(tiny_runs[1])
    study_block = tiny_config(Path("results"))["models"]["deep_emotion"]
    expected = {**get("deep_emotion").hyperparameters(), **study_block}
    assert len(folds) == TINY_FOLDS
    for run in folds:
        for key, value in expected.items():
            assert run.data.params[key] == str(value), key
    assert expected["epochs"] != get("deep_emotion").defaults["epochs"]  # the block did act


def test_a_killed_rerun_is_a_noop_when_nothing_changed(tiny_runs):
    workdir = tiny_runs[0].parent
    result = run_snakemake(workdir, "-n")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_snakemake_report_holds_the_marked_figures_with_their_captions(tiny_runs):
    """`snakemake --report report.zip` after the run: Snakemake's own provenance report."""
    import zipfile

    workdir = tiny_runs[0].parent
    run_snakemake(workdir, "--report", "report.zip")
    with zipfile.ZipFile(workdir / "report.zip") as archive:
        names = archive.namelist()
        bundled = "\n".join(archive.read(n).decode("utf-8", "replace") for n in names
                             if n.endswith((".js", ".html")))
    for figure in ("samples.png", "attention.png", "tsne.png", "audit_pairs.png", "report.html"):
        assert any(n.endswith(figure) for n in names), f"{figure} not in the report"
    assert "the face stage cropped, resized and normalised" in bundled  # a caption, rendered


def test_the_studys_report_renders_in_a_real_browser(tiny_runs, tmp_path):
    """Headless Chromium opens the run's report.html: every image loads, no script errors."""
    html = (tiny_runs[0] / "report.html").read_text(encoding="utf-8")
    seen = render_in_chromium(tmp_path / "report.html", html)
    assert seen["images"] == html.count("<img ") and seen["images"] >= 5, seen
    assert seen["broken"] == [] and seen["errors"] == [], seen


def test_dry_run_of_the_default_config_lists_every_stage():
    import subprocess
    import sys

    result = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-n", "--cores", "2",
                             "--configfile", "params.yaml"], cwd=ROOT, env=env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    listed = set(re.findall(r"^(\w+)\s+\d+$", result.stdout, re.MULTILINE))
    assert set(RULES) <= listed


def test_malformed_config_stops_before_any_job(tmp_path):
    config = tiny_config(Path("results"))
    config["models"]["deep_emotion"]["epochs"] = 0
    write_config(tmp_path, config)
    result = run_snakemake(tmp_path, check=False)
    assert result.returncode != 0
    assert "config key 'models.deep_emotion.epochs'" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_cross_dataset_study_tests_on_the_other_datasets_faces(tmp_path):
    config = tiny_config(Path("results"))
    config["datasets"]["other"] = copy.deepcopy(config["datasets"]["synthetic"])
    config["protocols"]["to_other"] = {"kind": "cross_dataset", "test_dataset": "other"}
    config["studies"] = [{"dataset": "synthetic", "protocol": "to_other",
                          "models": ["deep_emotion"]}]
    write_config(tmp_path, config)
    dry = run_snakemake(tmp_path, "-n").stdout
    jobs = {block.split("\n", 1)[0].strip(): block for block in re.split(r"\nrule ", dry)}
    assert "results/other/faces/faces.csv" in jobs["folds:"]
    assert "results/other/faces/faces.npy" in jobs["evaluate:"]
    assert "results/synthetic/faces/faces.npy" in jobs["train:"]
    assert "results/other/detection.json" in jobs["report:"]
