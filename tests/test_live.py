"""`ferbench live` end to end: a real face planted at known positions in a video and in an
image folder, a small untrained model.pt, the real CLI, and every output file read back."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from ferbench import cli, faces, live, tracking
from ferbench import train as train_mod
from ferbench.jobs import load_model, log_mlflow_model

LABELS = ["neutral", "happiness", "surprise"]
FRAMES, FACES = 6, 3


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A 640x480 video with three astronaut faces drifting, and each frame's true boxes."""
    folder = tmp_path_factory.mktemp("planted")
    truth = live.write_synthetic_video(folder / "faces.avi", FACES, FRAMES)
    return folder / "faces.avi", truth


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """An untrained deep_emotion (67k weights) in the train stage's format."""
    return live.write_untrained_model(tmp_path_factory.mktemp("model") / "model.pt",
                                      "deep_emotion", LABELS, vars(faces.FaceOptions()), seed=3)


@pytest.fixture(autouse=True)
def opencv_threads():
    """The CLI sets OpenCV's thread count for the process: give other tests theirs back."""
    threads = cv2.getNumThreads()
    yield
    cv2.setNumThreads(threads)


def run_live(*args) -> int:
    return cli.main(["live", *map(str, args), "--quiet"])


def read_outputs(out: Path) -> tuple[list[dict], list[dict], dict]:
    rows = [json.loads(line) for line in (out / "faces.jsonl").read_text().splitlines()]
    with open(out / "faces.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    return rows, table, json.loads((out / "summary.json").read_text())


def video_frames(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


def test_video_every_planted_face_is_found_labelled_and_logged(planted, model_file, tmp_path,
                                                               one_thread, capsys):
    video, truth = planted
    out = tmp_path / "out"
    assert run_live(video, "--model", model_file, "-o", out) == 0
    printed = capsys.readouterr().out
    for stage in ("detection", "preprocessing", "classification", "end to end"):
        assert stage in printed

    frames = video_frames(out / "annotated.mp4")
    assert len(frames) == FRAMES and frames[0].shape == (480, 640, 3)

    rows, table, summary = read_outputs(out)
    assert len(rows) == len(table) == summary["faces"] == FRAMES * FACES
    assert summary["frames"] == FRAMES and summary["end_to_end_fps"] > 0
    assert summary["detection_ms_per_frame"] > 0 and summary["classification_ms_per_face"] > 0
    for frame, boxes in enumerate(truth):
        found = [row["box"] for row in rows if row["frame"] == frame]
        assert len(found) == FACES
        for box in boxes:
            assert max(faces.iou(box, other) for other in found) >= 0.5, (frame, box, found)

    for row, line in zip(rows, table):
        probabilities = np.array([row["probabilities"][label] for label in LABELS])
        assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)
        assert row["label"] in LABELS and row["label"] == LABELS[int(probabilities.argmax())]
        assert [int(line[k]) for k in "xywh"] == row["box"] and line["label"] == row["label"]
        assert float(line[f"p_{LABELS[0]}"]) == row["probabilities"][LABELS[0]]
    # An untrained net still tells faces apart: the labels are not a constant.
    assert len({tuple(row["probabilities"].values()) for row in rows}) > 1

    annotated_difference = np.abs(frames[0].astype(int) - video_frames(video)[0].astype(int))
    assert annotated_difference.max() > 100  # the boxes and labels are drawn in


def test_detecting_every_third_frame_keeps_the_boxes_in_between(planted, model_file, tmp_path,
                                                                one_thread):
    video, _ = planted
    out = tmp_path / "out"
    assert run_live(video, "--model", model_file, "-o", out, "--detect-every", 3) == 0
    rows, _, summary = read_outputs(out)
    assert summary["detect_every"] == 3 and summary["faces"] == FRAMES * FACES
    boxes = {frame: sorted(row["box"] for row in rows if row["frame"] == frame)
             for frame in range(FRAMES)}
    assert boxes[0] == boxes[1] == boxes[2] and boxes[3] == boxes[4] == boxes[5]
    assert boxes[0] != boxes[3]  # the faces drift, and frame 3 is detected afresh
    assert run_live(video, "--model", model_file, "-o", out, "--detect-every", 0) == 2


def astronaut_frame(origins: list[tuple[int, int]]) -> tuple[np.ndarray, list[tuple]]:
    """A 320x240 grey-gradient frame with the astronaut's face at each patch origin, and the
    true face boxes."""
    patch, face_box = live.astronaut_patch()
    frame = np.tile(np.linspace(80, 160, 320), (240, 1))[..., None].repeat(3, 2)
    boxes = [live.paste_face(frame, patch, face_box, live.SyntheticFace(origin, 0.75, False, 0.0),
                         *origin) for origin in origins]
    return frame.astype(np.uint8), boxes


def found_by(search: faces.RoiSearch, frame: np.ndarray) -> list[tuple]:
    return [found.box for found in search.detect(frame)]


def test_region_search_follows_a_face_that_moved_without_searching_the_whole_frame():
    search = faces.RoiSearch(faces.HaarDetector(), full_every=100)
    for step, origin in enumerate([(20, 30), (35, 38), (50, 44)]):  # 15 px a frame
        frame, truth = astronaut_frame([origin])
        (box,) = found_by(search, frame)
        assert faces.iou(box, truth[0]) >= 0.5, (step, box, truth)
    assert search.full_searches == 1  # the first frame only: the moves were found around


def test_a_new_face_is_found_by_the_next_full_search():
    search = faces.RoiSearch(faces.HaarDetector(), full_every=3)
    counts = []
    for step in range(5):
        frame, truth = astronaut_frame([(20, 30)] + [(180, 40)] * (step >= 1))
        found = found_by(search, frame)
        counts.append(len(found))
        assert all(max(faces.iou(t, f) for f in found) >= 0.5 for t in truth[:len(found)])
    # The second face appears in frame 1; frames 1-2 search around the first face only, the
    # full search of frame 3 finds the newcomer and frame 4 follows both.
    assert counts == [1, 1, 1, 2, 2] and search.full_searches == 2


def test_region_search_loses_no_planted_face_the_full_search_finds(planted, model_file,
                                                                    tmp_path, one_thread):
    video, truth = planted
    recall = {}
    for every in (1, 4):
        out = tmp_path / f"every{every}"
        assert run_live(video, "--model", model_file, "-o", out,
                        "--full-search-every", every) == 0
        rows, _, summary = read_outputs(out)
        assert summary["full_search_every"] == every
        found = [[tuple(row["box"]) for row in rows if row["frame"] == frame]
                 for frame in range(FRAMES)]
        recall[every] = live.detection_recall(truth, found)
    assert recall[4] >= recall[1] == 1.0
    assert summary["full_searches"] < FRAMES  # some frames were searched around faces only


def test_region_search_is_refused_for_a_mediapipe_model(planted, tmp_path, capsys):
    mediapipe_model = live.write_untrained_model(
        tmp_path / "model.pt", "deep_emotion", LABELS,
        vars(faces.FaceOptions(detector="mediapipe")))
    assert run_live(planted[0], "--model", mediapipe_model, "-o", tmp_path / "out",
                    "--full-search-every", 5) == 2
    assert "Haar only" in capsys.readouterr().err


def test_image_folder_gives_the_face_stage_crops_and_the_training_input(model_file, tmp_path,
                                                                       one_thread):
    """Live on an image folder classifies each face exactly as the workflow's evaluation would
    (face stage -> Split -> predict), so inference sees what training saw."""
    folder = tmp_path / "images"
    folder.mkdir()
    frames = live.synthetic_frames(1, 12, seed=5)
    for index, (frame, _) in enumerate(frames):
        if index % 4 == 0:  # three frames, the face moved between them
            cv2.imwrite(str(folder / f"frame{index:02d}.png"), frame)
    (folder / "notes.txt").write_text("not an image\n")
    out = tmp_path / "out"
    assert run_live(folder, "--model", model_file, "-o", out, "--detect-scale", "1") == 0
    rows, table, summary = read_outputs(out)
    assert summary["frames"] == 3 and len(rows) == len(table) == 3
    assert len(video_frames(out / "annotated.mp4")) == 3

    manifest = pd.DataFrame({"image": sorted(p.name for p in folder.glob("*.png"))})
    model, saved = load_model(model_file)
    crops, stage, _ = faces.extract_faces(manifest, folder,
                                          faces.FaceOptions.from_config(saved["faces"]),
                                          progress=False)
    split = train_mod.Split.from_arrays(crops, np.zeros(len(crops), int), saved["input_size"])
    expected = train_mod.predict(model, split, torch.device("cpu")).numpy()
    for row, box, probabilities in zip(rows, stage["bbox"], expected):
        assert row["box"] == list(faces.parse_box(box))
        assert [row["probabilities"][label] for label in LABELS] == pytest.approx(
            probabilities, abs=1e-6)


def test_a_model_is_fetched_by_mlflow_run_id(planted, model_file, tmp_path, one_thread,
                                             capsys):
    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    tracker = tracking.Tracker(uri, "live-test", tmp_path)
    run_id = tracker.start_run("deep_emotion-fold0", {})
    log_mlflow_model(tracker, run_id, model_file)
    out = tmp_path / "out"  # the same weights as the file: tests/test_predict.py
    assert run_live(planted[0], "--run-id", run_id, "--tracking-uri", uri, "-o", out,
                    "--max-frames", 2) == 0
    rows, _, summary = read_outputs(out)
    assert summary["frames"] == 2 and len(rows) == 2 * FACES
    capsys.readouterr()
    assert run_live(planted[0], "--run-id", "0" * 32, "--tracking-uri", uri, "-o", out) == 2
    assert f"cannot load MLflow model runs:/{'0' * 32}/model" in capsys.readouterr().err


@pytest.fixture
def model_without_face_options(model_file, tmp_path):
    saved = torch.load(model_file, weights_only=True)
    del saved["faces"]
    torch.save(saved, tmp_path / "old.pt")
    return tmp_path / "old.pt"


@pytest.mark.parametrize("case, message", [
    ("missing model", "no model file"),
    ("missing source", "no such video"),
    ("unreadable video", "cannot read"),
    ("model without face options", "records no face-stage options"),
    ("missing tracking store", "no MLflow store"),
])
def test_clear_one_line_errors(case, message, planted, model_file, model_without_face_options,
                               tmp_path, capsys):
    broken = tmp_path / "broken.avi"
    broken.write_text("this is not a video\n")
    args = {
        "missing model": [planted[0], "--model", tmp_path / "absent.pt"],
        "missing source": [tmp_path / "absent.avi", "--model", model_file],
        "unreadable video": [broken, "--model", model_file],
        "model without face options": [planted[0], "--model", model_without_face_options],
        "missing tracking store": [planted[0], "--run-id", "0" * 32, "--tracking-uri",
                                   "sqlite:///" + str(tmp_path / "absent.db")],
    }[case]
    assert run_live(*args, "-o", tmp_path / "out") == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error


def test_a_test_flip_model_votes_with_each_faces_mirror_as_evaluation_does(tmp_path,
                                                                           one_thread):
    path = live.write_untrained_model(tmp_path / "model.pt", "deep_emotion", LABELS,
                                      vars(faces.FaceOptions(detector="none")), seed=3,
                                      test_flip=True)
    live_model = live.load_live_model(path, torch.device("cpu"))
    crops = np.random.default_rng(0).integers(0, 256, (2, 64, 64), dtype=np.uint8)
    split = train_mod.Split.from_arrays(crops, np.zeros(2, int), live_model.input_size)
    with live.Recognizer(live_model, torch.device("cpu")) as recognizer:
        got = recognizer._classify(crops)
    cpu = torch.device("cpu")
    assert live_model.test_flip
    assert got == pytest.approx(train_mod.predict(live_model.network, split, cpu,
                                                  flip=True).numpy(), abs=1e-6)
    assert got != pytest.approx(train_mod.predict(live_model.network, split, cpu).numpy(),
                                abs=1e-4)
