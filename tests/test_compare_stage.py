"""The compare stage from files: statistics.json from the evaluate stage's predictions, the
numbers in the parent MLflow runs, and in the report (intervals, paired table, calibration)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ferbench import compare, jobs, paths, tracking
from ferbench.report import build_report
from tests.test_report import LABELS, pct, write_explained, write_summary

#: Per model, per fold: which of the fold's 12 test faces it gets right.
RIGHT = {"deepfer": [[1] * 10 + [0] * 2, [1] * 11 + [0], [1] * 9 + [0] * 3],
         "deep_emotion": [[1] * 7 + [0] * 5, [1] * 8 + [0] * 4, [1] * 8 + [0] * 4]}


def write_predictions(fold_dir: Path, right: list[int], rng) -> None:
    """A predictions.csv as evaluate_fold writes it: the fold's 12 test faces, uid 100+."""
    rows = []
    for uid, ok in enumerate(right):
        label = LABELS[uid % 3]
        predicted = label if ok else LABELS[(uid + 1) % 3]
        largest_first = np.sort(rng.dirichlet([1, 1, 1]))[::-1]
        order = [predicted] + [c for c in LABELS if c != predicted]
        probabilities = dict(zip(order, largest_first))
        rows.append({"uid": 100 + uid, "subject": f"s{uid % 4}", "label": label,
                     "predicted": predicted,
                     **{f"p_{c}": round(float(probabilities[c]), 6) for c in LABELS}})
    pd.DataFrame(rows).to_csv(fold_dir / "predictions.csv", index=False)


def write_folds(path: Path, folds: int) -> None:
    rows = [{"fold": k, "uid": uid, "label": LABELS[uid % 3], "subject": "s", "sequence": "",
             "role": role, "identities": True}
            for k in range(folds) for role, uids in (("train", range(36)), ("val", range(6)),
                                                      ("test", range(100, 112)))
            for uid in uids]
    pd.DataFrame(rows).to_csv(path, index=False)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    """Two models' summaries and fold predictions, a split table, and the compare stage run
    on them with parent MLflow runs in a local store."""
    rng = np.random.default_rng(0)
    tmp_path = tmp_path_factory.mktemp("compare")
    results = tmp_path / "results"
    config = {"results": str(results), "seed": 0,
              "mlflow": {"tracking_uri": "", "experiment": "ferbench"}}
    tracker = jobs._tracker(config)
    summaries, predictions = [], []
    for model, right in RIGHT.items():
        summary = write_summary(results, model, [float(np.mean(r)) for r in right], rng)
        data = json.loads(summary.read_text())
        data["mlflow_run_id"] = tracker.start_run(model, {tracking.ROLE_TAG: "parent"})
        summary.write_text(json.dumps(data))
        for k, faces in enumerate(right):
            write_predictions(summary.parent / f"fold{k}", faces, rng)
        summaries.append(summary)
        predictions.append([summary.parent / f"fold{k}" / "predictions.csv"
                            for k in range(len(right))])
    folds = results / "synthetic" / "subject_5fold" / "folds.csv"
    write_folds(folds, 3)
    out = paths.beside_protocol(paths.STATISTICS, summaries[0])
    statistics = jobs.compare_study(summaries, predictions, folds, out, config)
    return {"summaries": summaries, "statistics": statistics, "out": out, "tracker": tracker,
            "tmp": tmp_path}


def test_statistics_come_from_the_folds_and_predictions(study):
    stats = json.loads(study["out"].read_text())
    assert stats["test_train_ratio"] == pytest.approx(12 / 36)
    pair = stats["pairs"][0]
    assert (pair["a"], pair["b"]) == ("deepfer", "deep_emotion")
    differences = [np.mean(a) - np.mean(b) for a, b in zip(*RIGHT.values())]
    assert pair["accuracy"]["mean"] == pytest.approx(np.mean(differences))
    assert pair["accuracy"]["low"] == pytest.approx(
        compare.corrected_t_interval(differences, 12 / 36)["low"])
    # pooled: deepfer right on 30 faces, deep_emotion on 23, always a superset here
    assert (pair["mcnemar"]["faces"], pair["mcnemar"]["a_only"],
            pair["mcnemar"]["b_only"]) == (36, 7, 0)
    assert stats["models"]["deepfer"]["calibration"]["faces"] == 36


def test_parent_runs_carry_intervals_calibration_and_each_comparison(study):
    client = study["tracker"].client
    stats = study["statistics"]
    for summary in study["summaries"]:
        data = json.loads(summary.read_text())
        run = client.get_run(data["mlflow_run_id"])
        metrics = run.data.metrics
        own = stats["models"][data["model"]]
        assert metrics["accuracy_ci_low"] == pytest.approx(own["accuracy"]["low"])
        assert metrics["ece"] == pytest.approx(own["calibration"]["ece"])
        assert "statistics.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    pair = stats["pairs"][0]
    deepfer = client.get_run(json.loads(study["summaries"][0].read_text())["mlflow_run_id"])
    baseline = client.get_run(json.loads(study["summaries"][1].read_text())["mlflow_run_id"])
    assert deepfer.data.metrics["vs_deep_emotion_accuracy_diff"] == pytest.approx(
        pair["accuracy"]["mean"])
    # seen from the other side: negated, bounds swapped
    assert baseline.data.metrics["vs_deepfer_accuracy_diff_low"] == pytest.approx(
        -pair["accuracy"]["high"])
    assert baseline.data.metrics["vs_deepfer_mcnemar_p"] == pytest.approx(pair["mcnemar"]["p"])


def test_report_shows_intervals_the_paired_table_and_calibration(study):
    text = build_report(study["summaries"], [], [], study["tmp"] / "report.html").read_text(
        encoding="utf-8")
    stats = study["statistics"]
    for model, own in stats["models"].items():
        interval = own["accuracy"]
        assert f"[{pct(interval['low'])}, {pct(interval['high'])}]" in text, model
    table = text.split("<h3>Paired comparisons</h3>")[1].split("</table>")[0]
    pair = stats["pairs"][0]["accuracy"]
    assert "deepfer − deep_emotion" in table
    assert f"<td>{100 * pair['mean']:+.2f}</td>" in table
    assert f"<td>[{pct(pair['low'])}, {pct(pair['high'])}]</td>" in table
    assert "Nadeau &amp; Bengio 2003" in table
    assert text.count("reliability diagram, ") == 2
    wilson = compare.wilson_interval(10, 12)  # deepfer's fold 0
    assert f"<td>{pct(10 / 12)}</td><td>[{pct(wilson['low'])}, {pct(wilson['high'])}]</td>" in (
        text)
    ece = stats["models"]["deepfer"]["calibration"]["ece"]
    assert f"expected calibration error {100 * ece:.2f}%" in text


def test_published_number_is_checked_against_our_interval(study, tmp_path):
    shutil.copytree(study["tmp"] / "results", tmp_path / "results")
    summary = tmp_path / study["summaries"][1].relative_to(study["tmp"])
    write_explained(summary, "jaffe", np.random.default_rng(1))
    text = build_report([summary], [], [], tmp_path / "r.html").read_text(encoding="utf-8")
    row = text.split("Matched on model")[1].split("</tr>")[1]
    interval = study["statistics"]["models"]["deep_emotion"]["accuracy"]
    assert f"<td>[{pct(interval['low'])}, {pct(interval['high'])}]</td>" in row
    # DeepFER's paper reports 92.80% for deep_emotion on JAFFE, far above our ~64%
    assert "<td>92.80</td><td>no</td>" in row


def test_friedman_and_the_cd_diagram_need_two_datasets(study, tmp_path):
    rng = np.random.default_rng(3)
    text = build_report(study["summaries"], [], [], tmp_path / "one.html").read_text(
        encoding="utf-8")
    assert "critical difference" not in text
    others = []
    for dataset, accuracies in (("ckplus", {"deepfer": [0.9, 0.8], "deep_emotion": [0.7, 0.6]}),
                                ("jaffe", {"deepfer": [0.6, 0.5], "deep_emotion": [0.8, 0.7]})):
        for model, acc in accuracies.items():
            summary = write_summary(tmp_path / dataset, model, acc, rng)
            moved = tmp_path / dataset / dataset / "subject_5fold" / model
            moved.parent.mkdir(parents=True, exist_ok=True)
            summary.parent.rename(moved)
            data = json.loads((moved / "summary.json").read_text())
            data["dataset"] = dataset
            (moved / "summary.json").write_text(json.dumps(data))
            others.append(moved / "summary.json")
    text = build_report(study["summaries"] + others, [], [], tmp_path / "three.html").read_text(
        encoding="utf-8")
    # deepfer ranks 1, 1, 2 over the three columns: average ranks 4/3 and 5/3, so
    # chi2_F = 12 * 3 / (2 * 3) * (16/9 + 25/9 - 2 * 9/4) = 1/3
    assert "Across 3 (dataset, protocol) columns" in text
    assert "Friedman χ²<sub>F</sub> = 0.333" in text
    assert 'alt="critical difference diagram"' in text
