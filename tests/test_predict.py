"""`ferbench predict` and `ferbench.predict`: the astronaut's face in every image format the
face stage reads, through the real CLI and the API, from a model.pt and from MLflow URIs."""

from __future__ import annotations

import json

import cv2
import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ferbench import cli, faces, jobs, live, tracking
from ferbench import predict as predict_api

LABELS = ["neutral", "happiness", "surprise"]
#: Formats whose pixels decode exactly as the 8-bit PNG's (16-bit ones hold v * 257).
LOSSLESS = ("photo.bmp", "photo.tiff", "photo16.png", "photo16.tiff")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return live.write_untrained_model(tmp_path_factory.mktemp("model") / "model.pt",
                                      "deep_emotion", LABELS, vars(faces.FaceOptions()), seed=5)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """The astronaut photo as 8-bit PNG, GIF, BMP and TIFF, and 16-bit PNG and TIFF."""
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    rgb = data.astronaut()
    for name in ("photo.png", "photo.gif", "photo.bmp", "photo.tiff"):
        Image.fromarray(rgb).save(folder / name)
    wide = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257
    for name in ("photo16.png", "photo16.tiff"):
        assert cv2.imwrite(str(folder / name), wide)
    assert cv2.imread(str(folder / "photo16.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    (folder / "notes.txt").write_text("not an image: a folder's other files are passed over")
    return folder


@pytest.fixture(scope="module")
def table(photos, model_file):
    return predict_api(photos, model_file)


def test_every_format_yields_the_astronaut_face_with_the_same_probabilities(table, photos):
    assert list(table.columns) == [*faces_columns(), *(f"p_{label}" for label in LABELS)]
    by_file = {name: table[table["file"] == str(photos / name)] for name in
               ("photo.png", "photo.gif", *LOSSLESS)}
    for name, rows in by_file.items():
        assert len(rows) == 1, f"{name}: {len(rows)} faces"
        box = tuple(rows[["x", "y", "w", "h"]].iloc[0])
        assert faces.iou(box, live.ASTRONAUT_FACE) > 0.7, name
        probabilities = rows[[f"p_{label}" for label in LABELS]].to_numpy()[0]
        assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)
        assert rows["label"].iloc[0] == LABELS[int(probabilities.argmax())]
        assert rows["probability"].iloc[0] == pytest.approx(probabilities.max())
    reference = by_file["photo.png"].drop(columns="file").reset_index(drop=True)
    for name in LOSSLESS:
        same = by_file[name].drop(columns="file").reset_index(drop=True)
        pd.testing.assert_frame_equal(same, reference)


def faces_columns():
    return ["file", "face", "x", "y", "w", "h", "label", "probability"]


def test_the_cli_writes_the_api_table_as_csv_and_json_lines(table, photos, model_file,
                                                             tmp_path, capsys):
    assert cli.main(["predict", str(photos), "--model", str(model_file)]) == 0
    printed = capsys.readouterr()
    assert "6 faces in 6 of 6 images" in printed.err
    from io import StringIO

    csv_table = pd.read_csv(StringIO(printed.out))
    pd.testing.assert_frame_equal(csv_table, table.round(6), check_dtype=False)

    out = tmp_path / "faces.jsonl"
    assert cli.main(["predict", str(photos / "photo.gif"), str(photos / "photo.bmp"),
                     "--model", str(model_file), "--format", "jsonl", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["file"] for row in rows] == [str(photos / "photo.gif"), str(photos / "photo.bmp")]
    for row in rows:
        expected = table[table["file"] == row["file"]].iloc[0]
        assert row["box"] == [int(expected[k]) for k in ("x", "y", "w", "h")]
        assert row["label"] == expected["label"]
        assert row["probabilities"] == {label: round(float(expected[f"p_{label}"]), 6)
                                        for label in LABELS}


def test_a_missing_image_or_model_is_a_one_line_error(photos, model_file, capsys):
    assert cli.main(["predict", str(photos / "absent.png"), "--model", str(model_file)]) == 2
    assert cli.main(["predict", str(photos), "--model", str(photos / "absent.pt")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors[0] == f"ferbench: error: no such image or folder: {photos / 'absent.png'}"
    assert errors[1].startswith(f"ferbench: error: no model file {photos / 'absent.pt'}")


def test_mlflow_runs_and_models_uris_give_the_model_file_table(table, photos, model_file,
                                                               tmp_path, one_thread):
    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    tracker = tracking.Tracker(uri, "predict-test", tmp_path)
    run_id = tracker.start_run("deep_emotion-fold0", {})
    model_uri = jobs.log_mlflow_model(tracker, run_id, model_file)
    # The summarize job registers in a process of its own, whose MLflow default store is
    # another one (./mlflow.db): its Tracker must still find the logged model.
    elsewhere = "sqlite:///" + str(tmp_path / "elsewhere.db")
    mlflow.set_tracking_uri(elsewhere)
    tracker = tracking.Tracker(uri, "predict-test", tmp_path)
    assert tracker.register("ferbench-photos", model_uri, run_id) == 1
    assert jobs.log_mlflow_model(tracker, run_id, model_file) == model_uri  # reruns add
    assert tracker.register("ferbench-photos", model_uri, run_id) == 1  # no model, no version
    mlflow.set_tracking_uri(elsewhere)  # so does `ferbench predict` in a fresh process
    mlflow.set_registry_uri(elsewhere)
    for source in (f"runs:/{run_id}/model", "models:/ferbench-photos/1"):
        served = predict_api([photos / "photo.png", photos / "photo16.tiff"], source, uri)
        expected = table[table["file"].isin(served["file"])].reset_index(drop=True)
        pd.testing.assert_frame_equal(served, expected, atol=1e-6)
    with pytest.raises(ValueError, match="cannot load MLflow model models:/ferbench-photos/2"):
        predict_api(photos / "photo.png", "models:/ferbench-photos/2", uri)
    closed_form = live.write_untrained_model(tmp_path / "hog.pt", "hog_svm", LABELS,
                                             vars(faces.FaceOptions()))
    baseline = tracker.start_run("hog_svm-fold0", {})
    assert jobs.log_mlflow_model(tracker, baseline, closed_form) is None  # numpy features
    assert tracker.logged_model(baseline) is None
