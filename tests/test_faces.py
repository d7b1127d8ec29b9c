"""The face stage's eye-line alignment: level eyes, a crop transform that matches the pixels,
byte-identical output."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pandas as pd
import pytest

from ferbench import faces
from ferbench.data import synthetic

ROLL = 12.0
OPTIONS = faces.FaceOptions(size=96)


def rotated_face(root, roll: float = ROLL) -> pd.DataFrame:
    """One synthetic face turned by `roll` degrees on a plain frame, as a one-row manifest."""
    identity = synthetic.make_identity(1)
    pose = synthetic.Pose(centre=(160, 120), scale=60, roll=roll, yaw=0, gaze=(0, 0), light=0)
    units = synthetic.ActionUnits()
    face, alpha, origin = synthetic.render_face(identity, units, pose)
    frame = np.full((240, 320, 3), 128, np.float32)
    synthetic.place_face(frame, face, alpha, origin, pose)
    cv2.imwrite(str(root / "face.png"), frame.astype(np.uint8))
    points = synthetic.face_landmarks(identity, units, pose)
    return pd.DataFrame([{"image": "face.png", "label": "neutral", "subject": "s", "sequence": "q",
                          "frame": 1, "source_split": "all",
                          "gt_bbox": " ".join(map(str, synthetic.face_box(identity, pose))),
                          "landmarks": synthetic.landmarks_text(points)}])


def crop_tilt(table: pd.DataFrame, manifest: pd.DataFrame) -> float:
    """Eye-line angle (degrees) of the true landmarks moved into the face crop."""
    transform = np.array(table["crop_transform"].iloc[0].split(), float).reshape(2, 3)
    points = faces.parse_landmarks(manifest["landmarks"].iloc[0])
    return faces.eye_line_angle(faces.landmark_eyes(faces.apply_transform(transform, points)))


@pytest.fixture
def manifest(tmp_path):
    return rotated_face(tmp_path)


def test_the_eye_line_is_level_after_alignment_from_landmarks(tmp_path, manifest):
    _, unaligned, _ = faces.extract_faces(manifest, tmp_path, replace(OPTIONS, align=False),
                                          progress=False)
    _, aligned, stats = faces.extract_faces(manifest, tmp_path, OPTIONS, progress=False)
    assert unaligned["outcome"].iloc[0] == "detected"
    assert abs(crop_tilt(unaligned, manifest) - ROLL) < 0.5
    assert abs(crop_tilt(aligned, manifest)) < 0.1
    row = aligned.iloc[0]
    assert row["aligned"] and row["align_source"] == "landmarks"
    assert abs(row["align_angle"] - ROLL) < 0.5
    assert stats["aligned"] == 1 and stats["aligned_by"] == {"landmarks": 1}


def test_haar_eyes_level_a_face_without_landmarks(tmp_path, manifest):
    bare = manifest.assign(landmarks="")
    _, table, _ = faces.extract_faces(bare, tmp_path, OPTIONS, progress=False)
    assert table["align_source"].iloc[0] == "haar-eyes"
    assert abs(crop_tilt(table, manifest)) < 3.0  # was 12 degrees


def test_the_crop_transform_moves_points_with_the_pixels(tmp_path, manifest):
    """The moved eye centres land on the dark irises of the aligned crop."""
    crops, table, _ = faces.extract_faces(manifest, tmp_path, replace(OPTIONS, normalise="none"),
                                          progress=False)
    transform = np.array(table["crop_transform"].iloc[0].split(), float).reshape(2, 3)
    points = faces.apply_transform(transform, faces.parse_landmarks(manifest["landmarks"][0]))
    crop = crops[0].astype(float)
    for x, y in faces.landmark_eyes(points):
        x, y = int(round(x)), int(round(y))
        assert crop[y - 1:y + 2, x - 1:x + 2].mean() < 0.6 * np.median(crop)


def test_alignment_is_byte_deterministic(tmp_path, manifest):
    bare = manifest.assign(landmarks="")
    first = faces.extract_faces(bare, tmp_path, OPTIONS, progress=False)
    second = faces.extract_faces(bare, tmp_path, OPTIONS, progress=False)
    assert first[0].tobytes() == second[0].tobytes()
    assert first[1].equals(second[1])


def test_workers_give_the_outputs_of_one_process(tmp_path, monkeypatch):
    """Haar over two worker processes, in chunks of two rows: same faces, same table."""
    monkeypatch.setattr(faces, "CHUNK_ROWS", 2)
    rows = []
    for roll in (-8, 0, 5, 12):
        folder = tmp_path / f"roll{roll}"
        folder.mkdir()
        rows.append(rotated_face(folder, roll).assign(image=f"roll{roll}/face.png"))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    manifest = pd.concat(rows + [rows[0].assign(image="broken.png")], ignore_index=True)
    bare = manifest.assign(landmarks="")
    one = faces.extract_faces(bare, tmp_path, OPTIONS, progress=False)
    two = faces.extract_faces(bare, tmp_path, OPTIONS, progress=False, workers=2)
    assert one[0].shape == (4, 96, 96) and one[0].tobytes() == two[0].tobytes()
    assert one[1].equals(two[1]) and list(one[1]["outcome"])[-1] == "corrupt"
    assert list(one[1]["face_index"]) == [0, 1, 2, 3, -1]


def test_without_two_eyes_the_face_is_not_turned(tmp_path):
    cv2.imwrite(str(tmp_path / "blank.png"), np.full((120, 160, 3), 90, np.uint8))
    manifest = pd.DataFrame([{"image": "blank.png", "label": "neutral", "subject": "s",
                              "sequence": "q", "frame": 1, "source_split": "all"}])
    options = replace(OPTIONS, detector="none")
    _, table, stats = faces.extract_faces(manifest, tmp_path, options, progress=False)
    assert not table["aligned"].iloc[0] and table["align_angle"].iloc[0] == 0.0
    assert stats["aligned"] == 0 and stats["align_angle_abs_mean"] is None


def test_the_angle_is_positive_when_the_right_eye_sits_lower():
    """Positive angles turn counter-clockwise in OpenCV, which levels such an eye line."""
    assert faces.eye_line_angle(((0, 0), (10, 0))) == 0.0
    assert faces.eye_line_angle(((0, 0), (10, 10))) == pytest.approx(45.0)


def test_a_shrunk_search_finds_the_face_and_crops_the_full_image(tmp_path):
    """detect_scale 0.5: Haar searches a 160x120 copy, the box comes back in frame pixels
    near the full search's, and the crop is cut from the full-resolution frame."""
    manifest = rotated_face(tmp_path, roll=0).assign(landmarks="")
    full = faces.extract_faces(manifest, tmp_path, OPTIONS, progress=False)
    half_options = replace(OPTIONS, detect_scale=0.5)
    half = faces.extract_faces(manifest, tmp_path, half_options, progress=False)
    boxes = [faces.parse_box(table["bbox"].iloc[0]) for table in (full[1], half[1])]
    assert list(half[1]["outcome"]) == ["detected"] and faces.iou(*boxes) > 0.7
    image = cv2.imread(str(tmp_path / "face.png"))
    angle = half[1]["align_angle"].iloc[0]
    assert np.array_equal(half[0][0], faces.crop_face(image, boxes[1], half_options, angle))


def test_a_scaled_detector_maps_boxes_and_eyes_back():
    class Fixed:  # finds one face at a fixed place of whatever image it is given
        def detect(self, image):
            assert image.shape[:2] == (60, 80)
            return [faces.Detection((10, 12, 20, 20), 0.9, ((14.0, 18.0), (24.0, 18.0)))]

    (found,) = faces.ScaledDetector(Fixed(), 0.25).detect(np.zeros((240, 320, 3), np.uint8))
    assert found == faces.Detection((40, 48, 80, 80), 0.9, ((56.0, 72.0), (96.0, 72.0)))
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\], not 1.5"):
        faces.ScaledDetector(Fixed(), 1.5)
