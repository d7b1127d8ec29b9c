"""The landmarks stage (68 points per face crop) and the mediapipe worker behind it."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

from ferbench import faces, landmarks, mediapipe_client
from ferbench.data import synthetic

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
