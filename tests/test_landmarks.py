"""The landmarks stage (68 points per face crop) and the mediapipe worker behind it."""

from __future__ import annotations

import subprocess
from dataclasses import replace

import cv2
import numpy as np
import pandas as pd
import pytest

from ferbench import config as config_mod
from ferbench import faces, landmarks, mediapipe_client, paths
from ferbench.data import synthetic
from tests.conftest import tiny_config
from tests.workflow_helpers import STUDY_FILE, env, snakemake_command, write_config

OPTIONS = faces.FaceOptions(size=64)
needs_mediapipe = pytest.mark.skipif(not mediapipe_client.available(),
                                     reason="no .venv-mediapipe (make install builds it)")


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    """A small synthetic set through the face stage: (root, manifest, crops, face table)."""
    root = tmp_path_factory.mktemp("synthetic")
    manifest = synthetic.generate(root, identities=2, repetitions=1, frames=3, progress=False)
    crops, table, _ = faces.extract_faces(manifest, root, OPTIONS, progress=False)
    return root, manifest, crops, table


def test_the_dataset_landmarks_land_on_the_crops_features(stage):
    root, _, crops, table = stage
    points, counts = landmarks.crop_landmarks(table, len(crops), root, "none", progress=False)
    assert points.shape == (len(crops), 68, 2) and points.dtype == np.float32
    assert counts == {"dataset": len(crops), "mesh": 0, "none": 0}
    assert (points[:, 17:] > 0).all() and (points[:, 17:] < OPTIONS.size - 1).all()
    for crop, face in zip(crops, points):
        left_eye, right_eye = (face[part].mean(0) for part in faces.EYE_POINTS)
        assert abs(left_eye[1] - right_eye[1]) < 0.5  # the face stage levelled the eyes
        for part in faces.EYE_POINTS:
            inside = np.zeros_like(crop)
            cv2.fillPoly(inside, [np.rint(face[part]).astype(np.int32)], 1)
            assert inside.any() and crop[inside > 0].min() < np.median(crop)


def test_faces_without_landmarks_get_nan_when_no_model_is_asked_for(stage):
    root, _, crops, table = stage
    bare = table.assign(landmarks="")
    points, counts = landmarks.crop_landmarks(bare, len(crops), root, "none", progress=False)
    assert np.isnan(points).all() and counts["none"] == len(crops)


def test_run_writes_the_array_and_the_sample_sheet(stage, tmp_path):
    root, _, crops, table = stage
    table.to_csv(tmp_path / "faces.csv", index=False)
    np.save(tmp_path / "faces.npy", crops)
    out = {"out_array": tmp_path / "landmarks.npy", "out_samples": tmp_path / "sheet.png"}
    counts = landmarks.run({"faces": {"landmark_model": "none"}}, root, tmp_path / "faces.csv",
                           tmp_path / "faces.npy", progress=False, **out)
    assert counts["dataset"] == len(crops)
    saved = np.load(out["out_array"])
    assert saved.shape == (len(crops), 68, 2)
    sheet = cv2.imread(str(out["out_samples"]))
    assert sheet.shape[1] == 8 * 3 * OPTIONS.size
    first = out["out_samples"].read_bytes()
    landmarks.run({"faces": {"landmark_model": "none"}}, root, tmp_path / "faces.csv",
                  tmp_path / "faces.npy", progress=False, **out)
    assert out["out_samples"].read_bytes() == first


def test_the_mesh_table_picks_68_distinct_mesh_points():
    assert len(landmarks.MESH_TO_68) == 68 == len(set(landmarks.MESH_TO_68))
    assert all(0 <= i < 468 for i in landmarks.MESH_TO_68)


@needs_mediapipe
def test_the_worker_detects_the_synthetic_faces(stage):
    root, manifest, _, _ = stage
    with mediapipe_client.MediapipeWorker(min_face=20) as worker:
        for row in manifest.itertuples(index=False):
            found = worker.detect(cv2.imread(str(root / row.image)))
            assert found and faces.iou(found[0].box, faces.parse_box(row.gt_bbox)) > 0.4
            assert 0.5 <= found[0].score <= 1 and found[0].eyes[0][0] < found[0].eyes[1][0]


@needs_mediapipe
def test_the_mesh_mapped_to_68_points_is_near_the_drawn_landmarks(stage):
    """Normalised by the eye distance, the mapped mesh stays near the synthetic ground truth."""
    root, manifest, _, _ = stage
    with mediapipe_client.MediapipeWorker() as worker:
        for row in manifest.itertuples(index=False):
            truth = faces.parse_landmarks(row.landmarks)
            mesh = worker.mesh(cv2.imread(str(root / row.image)), faces.parse_box(row.gt_bbox))
            assert mesh.shape == (468, 2)
            eyes = faces.landmark_eyes(truth)
            scale = np.hypot(eyes[1][0] - eyes[0][0], eyes[1][1] - eyes[0][1])
            error = np.linalg.norm(landmarks.mesh_to_68(mesh) - truth, axis=1) / scale
            assert error.mean() < 0.2
            for part in faces.EYE_POINTS:  # eyes, not mirrored: each eye's error is small
                assert error[part].mean() < 0.15


@needs_mediapipe
def test_the_mediapipe_face_stage_and_mesh_fallback(stage):
    root, manifest, _, _ = stage
    options = replace(OPTIONS, detector="mediapipe")
    bare = manifest.assign(landmarks="")
    crops, table, stats = faces.extract_faces(bare, root, options, progress=False)
    assert stats["detection_rate"] == 1.0 and stats["aligned_by"] == {"detector": len(bare)}
    points, counts = landmarks.crop_landmarks(table, len(crops), root, "mediapipe",
                                              progress=False)
    assert counts["mesh"] == len(crops) and np.isfinite(points).all()


@needs_mediapipe
def test_recorded_detections_give_the_face_stage_what_the_worker_finds(stage, tmp_path):
    """Rule mediapipe_detect's batch mode (MediaPipe's own environment) and the live worker
    give the face stage byte-identical crops and the same table."""
    root, manifest, _, _ = stage
    options = replace(OPTIONS, detector="mediapipe")
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    (root / "unreadable.png").write_bytes(b"not a png")
    unreadable = manifest.iloc[:1].assign(image="unreadable.png")
    unreadable.to_csv(tmp_path / "manifest.csv", mode="a", header=False, index=False)
    subprocess.run([str(mediapipe_client.interpreter()), str(mediapipe_client.WORKER),
                    "detect-manifest", str(tmp_path / "manifest.csv"), str(root),
                    str(tmp_path / "mediapipe.jsonl")], check=True, timeout=300)
    recorded = faces.RecordedDetections(tmp_path / "mediapipe.jsonl", options.min_face)
    assert recorded.faces["unreadable.png"] == []
    assert all(recorded.faces[name] for name in manifest["image"])
    live_crops, live_table, _ = faces.extract_faces(manifest, root, options, progress=False)
    crops, table, _ = faces.extract_faces(manifest, root, options, progress=False,
                                          recorded=recorded)
    np.testing.assert_array_equal(crops, live_crops)
    pd.testing.assert_frame_equal(table, live_table)
    with pytest.raises(KeyError, match="rerun mediapipe_detect"):
        recorded.detect("absent.png")


def test_a_mediapipe_dataset_is_detected_by_its_own_rule_in_its_own_environment(tmp_path):
    """The DAG: mediapipe_detect (conda env mediapipe.yaml) feeds the face stage; a Haar
    dataset has no such job."""
    config = tiny_config(tmp_path / "results")
    config["datasets"]["synthetic"].setdefault("faces", {})["detector"] = "mediapipe"
    write_config(tmp_path, config)
    faces_table = paths.fill(paths.FACES_TABLE, config_mod.load(tmp_path / STUDY_FILE),
                             dataset="synthetic")
    dry = subprocess.run(snakemake_command(tmp_path, "-n", faces_table),
                         capture_output=True, text=True, env=env(), timeout=300)
    assert dry.returncode == 0, dry.stderr
    assert "rule mediapipe_detect:" in dry.stdout and "rule faces:" in dry.stdout
    config["datasets"]["synthetic"]["faces"]["detector"] = "haar"
    write_config(tmp_path, config)
    dry = subprocess.run(snakemake_command(tmp_path, "-n", faces_table),
                         capture_output=True, text=True, env=env(), timeout=300)
    assert dry.returncode == 0 and "mediapipe_detect" not in dry.stdout, dry.stderr
