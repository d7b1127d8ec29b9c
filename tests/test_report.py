"""The HTML report: self-contained, deterministic, escaped, and faithful to its inputs."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imsave

from ferbench import paths
from ferbench.evaluate import mean_std
from ferbench.report import build_report
from tests.workflow_helpers import render_in_chromium

LABELS = ["anger", "happiness", "sadness"]
MODELS = {"deep_emotion": [0.71, 0.79], "vgg<small>&co": [0.64, 0.69]}
BENCHMARKS = {"train": [12.5, 30.25], "faces": [3.333]}
BENCH_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def per_class(rng) -> dict:
    return {label: {"precision": float(rng.uniform(0.4, 1)), "recall": float(rng.uniform(0.4, 1)),
                    "f1": float(rng.uniform(0.4, 1)), "support": int(rng.integers(5, 20))}
            for label in LABELS}


def write_fold(folder: Path, accuracy: float, rng) -> dict:
    """metrics.json and history.csv for one fold, as the evaluate/train stages write them."""
    folder.mkdir(parents=True)
    confusion = rng.integers(0, 10, size=(3, 3)).tolist()
    metrics = {"accuracy": accuracy, "macro_f1": accuracy - 0.05, "labels": LABELS,
               "confusion": confusion, "per_class": per_class(rng), "best_epoch": 2,
               "epochs_run": 3}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    lines = ["epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds"]
    lines += [f"{e},{1.5 / e:.4f},{0.3 * e:.3f},{1.7 / e:.4f},{0.25 * e:.3f},0.001,1.0"
              for e in (1, 2, 3)]
    (folder / "history.csv").write_text("\n".join(lines) + "\n")
    return metrics


def write_summary(results: Path, model: str, accuracies: list[float], rng) -> Path:
    """A summary.json with two folds, written next to its fold files."""
    out_dir = results / "synthetic" / "subject_5fold" / model
    folds, fold_metrics = [], []
    for k, accuracy in enumerate(accuracies):
        metrics = write_fold(out_dir / f"fold{k}", accuracy, rng)
        fold_metrics.append(metrics)
        folds.append({"fold": k, "accuracy": accuracy, "macro_f1": metrics["macro_f1"],
                      "metrics": f"fold{k}/metrics.json", "history": f"fold{k}/history.csv",
                      "n_train": 40, "n_val": 10, "n_test": 12})
    acc_mean, acc_std = mean_std([f["accuracy"] for f in folds])
    f1_mean, f1_std = mean_std([f["macro_f1"] for f in folds])
    summary = {"dataset": "synthetic", "protocol": "subject_5fold",
               "protocol_description": "5-fold CV, folds split by subject",
               "subject_independent": True, "model": model, "labels": LABELS,
               "accuracy_mean": acc_mean, "accuracy_std": acc_std,
               "macro_f1_mean": f1_mean, "macro_f1_std": f1_std, "folds": folds,
               "confusion": np.sum([m["confusion"] for m in fold_metrics], axis=0).tolist(),
               "mlflow_run_id": None}
    path = out_dir / "summary.json"
    path.write_text(json.dumps(summary))
    return path


def write_benchmarks(results: Path) -> list[Path]:
    paths = []
    for rule, seconds in BENCHMARKS.items():
        for i, s in enumerate(seconds):
            path = results / "benchmarks" / rule / f"job{i}.tsv"
            path.parent.mkdir(parents=True, exist_ok=True)
            row = f"{s}\t0:00:{int(s):02d}\t512.5\t900\t-\t-\t1\t2\t95\t{s}\n"
            path.write_text(BENCH_HEADER + row)
            paths.append(path)
    return paths


def write_detection(results: Path) -> Path:
    path = results / "synthetic" / "detection.json"
    path.write_text(json.dumps({
        "dataset": "synthetic", "detector": "haar", "images": 100, "detected": 97, "missed": 2,
        "corrupt": 1, "fallback_full_image": 2, "dropped": 0, "detection_rate": 0.9797,
        "iou": {"mean": 0.81, "median": 0.83, "hit_rate_05": 0.95, "n": 97}, "seconds": 4.2}))
    return path


def study_context(adapter: str) -> dict:
    """jobs.study_context of a 7-class subject-independent 5-fold study."""
    return {"dataset": "synthetic", "protocol": "subject_5fold", "model": "deep_emotion",
            "adapter": adapter, "test_adapter": adapter, "kind": "subject_kfold",
            "class_set": "7", "frames": "all", "folds": 5}


def write_explained(summary: Path, adapter: str, rng) -> dict[str, bytes]:
    """The explain stage's two PNGs and record beside a study's summary.json."""
    figures = {}
    for template, side in ((paths.EXPLAIN_ATTENTION, 12), (paths.EXPLAIN_TSNE, 10)):
        path = paths.beside_summary(template, summary)
        path.parent.mkdir(parents=True, exist_ok=True)
        imsave(path, rng.uniform(size=(side, side, 3)))
        figures[template] = path.read_bytes()
    paths.beside_summary(paths.EXPLAIN_INFO, summary).write_text(
        json.dumps({"context": study_context(adapter), "fold": 0}))
    return figures


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    rng = np.random.default_rng(0)
    results = tmp_path_factory.mktemp("inputs") / "results"
    sample = results / "synthetic" / "faces" / "samples.png"
    sample.parent.mkdir(parents=True)
    imsave(sample, rng.uniform(size=(8, 16, 3)))
    summaries = [write_summary(results, m, a, rng) for m, a in MODELS.items()]
    return {"summaries": summaries,
            "detections": [write_detection(results)],
            "benchmarks": write_benchmarks(results),
            "samples": [sample],
            "explained": write_explained(summaries[0], "synthetic", rng)}


def build(inputs: dict, out: Path) -> str:
    build_report(inputs["summaries"], inputs["detections"], inputs["benchmarks"], out,
                 title="FER <study>", samples=inputs["samples"])
    return out.read_text(encoding="utf-8")


def pct(value: float) -> str:
    return f"{100 * value:.2f}"


@pytest.fixture(scope="module")
def text(inputs, tmp_path_factory) -> str:
    """The report built once from the shared inputs."""
    return build(inputs, tmp_path_factory.mktemp("report") / "report.html")


def test_report_is_one_self_contained_file(inputs, tmp_path):
    out_dir = tmp_path / "report"
    text = build(inputs, out_dir / "report.html")
    assert [p.name for p in out_dir.iterdir()] == ["report.html"]
    for external in ('src="http', "<link", "<script src", "url("):
        assert external not in text
    assert text.count('<img src="data:image/png;base64,') >= 2 * 3 + 2 + 2  # + explain figures
    sample = base64.b64encode(inputs["samples"][0].read_bytes()).decode()
    assert sample in text
    for png in inputs["explained"].values():
        assert base64.b64encode(png).decode() in text


def test_report_shows_the_input_numbers(inputs, text):
    for path in inputs["summaries"]:
        s = json.loads(path.read_text())
        assert f"{pct(s['accuracy_mean'])} ± {pct(s['accuracy_std'])}" in text
        assert f"{pct(s['macro_f1_mean'])} ± {pct(s['macro_f1_std'])}" in text
        metrics = [json.loads((path.parent / f["metrics"]).read_text()) for f in s["folds"]]
        for label in LABELS:
            f1 = np.mean([m["per_class"][label]["f1"] for m in metrics])
            assert f"<td>{pct(f1)}</td>" in text
    assert "(2 folds)" in text
    for rule, seconds in BENCHMARKS.items():
        assert f"<td>{rule}</td>" in text
        assert f"<td>{sum(seconds):.2f}</td>" in text
    assert "subject-independent" in text and "NOT subject-independent" not in text
    assert "<td>haar</td>" in text and f"<td>{pct(0.9797)}</td>" in text


def test_report_renders_in_a_real_browser_and_the_check_catches_faults(text, tmp_path):
    """Headless Chromium loads the report: every image decodes, no script errors; the same
    page with a broken image and a failing script is caught, so the check can fail."""
    seen = render_in_chromium(tmp_path / "report.html", text)
    assert seen["images"] >= 5 and seen["broken"] == [] and seen["errors"] == [], seen
    faulty = text.replace("</body>", '<img alt="a broken figure" src="data:image/png;base64,AAAA">'
                          "<script>undefined_function()</script></body>")
    seen = render_in_chromium(tmp_path / "faulty.html", faulty)
    assert seen["broken"] == ["a broken figure"], seen
    assert len(seen["errors"]) == 2 and "undefined_function" in " ".join(seen["errors"]), seen


def test_best_score_per_column_is_bold(inputs, text):
    best = json.loads(inputs["summaries"][0].read_text())
    worst = json.loads(inputs["summaries"][1].read_text())
    assert f"<b>{pct(best['accuracy_mean'])} ± " in text
    assert f"<b>{pct(worst['accuracy_mean'])} ± " not in text


def test_report_is_byte_deterministic(inputs, tmp_path):
    build(inputs, tmp_path / "a.html")
    build(inputs, tmp_path / "b.html")
    assert (tmp_path / "a.html").read_bytes() == (tmp_path / "b.html").read_bytes()


def test_text_is_html_escaped(text):
    assert "vgg&lt;small&gt;&amp;co" in text
    assert "vgg<small>" not in text
    assert "FER &lt;study&gt;" in text and "<study>" not in text


def test_missing_pieces_are_reported_not_fatal(inputs, tmp_path):
    summary = json.loads(inputs["summaries"][0].read_text())
    summary["subject_independent"] = False
    path = tmp_path / "leaky" / "summary.json"
    path.parent.mkdir()
    path.write_text(json.dumps(summary))  # fold files do not exist next to this copy
    out = build_report([path], [], [], tmp_path / "report.html")
    text = out.read_text(encoding="utf-8")
    assert "NOT subject-independent" in text
    assert "No detection statistics were given." in text
    assert "No benchmark files were given." in text
    assert "No training histories found." in text
    assert "No attention or t-SNE figures found" in text


def test_papers_table_is_listed_even_without_a_published_number(text):
    assert "<h2>2. The papers' numbers beside ours</h2>" in text
    assert ("no published number for deep_emotion on synthetic; the papers report deep_emotion "
            "on ckplus, fer2013, ferg, jaffe (table below)") in text
    # The transcribed table, whatever the studies: DAM-CNN's JAFFE number with its source,
    # folded away here, since no study ran on JAFFE.
    assert "The papers publish no number on synthetic." in text
    folded = text.split("<summary>Published accuracies on other datasets")[1]
    assert "<td>99.32</td>" in folded and "Table 8, Section 4.4.1" in folded
    # A study whose explain stage left no record cannot be matched, and says so.
    assert "study context unknown (no explain-stage record)" in text


def test_published_number_sits_beside_ours_with_the_protocol_differences(inputs, tmp_path):
    summary = tmp_path / "jaffe" / "summary.json"
    summary.parent.mkdir()
    summary.write_text(inputs["summaries"][0].read_text())
    write_explained(summary, "jaffe", np.random.default_rng(1))
    text = build_report([summary], [], [], tmp_path / "report.html").read_text(encoding="utf-8")
    ours = json.loads(summary.read_text())
    row = text.split("Matched on model")[1].split("</tr>")[1]
    assert f"<td>{pct(ours['accuracy_mean'])} ± {pct(ours['accuracy_std'])}</td>" in row
    assert "<td>92.80</td>" in row
    assert ("split: paper a split the paper does not describe (cited from Minaee &amp; "
            "Abdolrashidi 2019 (the 213 original images)); ours subject-independent 5-fold") in row
    # The transcribed numbers on JAFFE open the table; the other datasets' are folded away.
    own, folded = text.split("Published accuracies on jaffe")[1].split("<details>")
    assert "<td>99.32</td>" in own and "<td>fer2013</td>" not in own
    assert "<td>fer2013</td>" in folded and "<td>jaffe</td>" not in folded.split("</details>")[0]


def test_ablation_table_puts_each_component_beside_the_papers_numbers(tmp_path):
    rng = np.random.default_rng(2)
    results = tmp_path / "results"
    accuracies = {"vgg16": [0.5, 0.6], "rccnet": [0.7, 0.8], "e2capsnet": [0.8, 0.9],
                  "deep_emotion": [0.4, 0.5]}
    summaries = [write_summary(results, m, a, rng) for m, a in accuracies.items()]
    text = build_report(summaries, [], [], tmp_path / "report.html").read_text(encoding="utf-8")
    table = text.split("<h3>Ablations</h3>")[1].split("</table>")[0]
    assert "E2-Capsnet Table 1" in table and "ours on synthetic / subject_5fold" in table
    rows = table.split("</tr>")
    assert "VGG16 + AU attention + capsules" in rows[3] and "85.24 (rafdb, Table 1" in rows[3]
    assert f"<td>{pct(0.85)} ± " in rows[3]
    assert "deep_emotion" not in table  # not part of any paper's ablation
    # A study with one member of an ablation has nothing to compare: no section.
    alone = build_report(summaries[-2:], [], [], tmp_path / "alone.html").read_text()
    assert "<h3>Ablations</h3>" not in alone
