"""The embedded synthetic dataset: layout, determinism, content and Haar detectability."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from ferbench.data import synthetic
from ferbench.data.manifest import validate
from ferbench.faces import EYE_POINTS, HaarDetector, iou, parse_landmarks

SMALL = {"identities": 3, "repetitions": 1, "frames": 3, "progress": False}
COLUMNS = ["image", "label", "subject", "sequence", "frame", "source_split", "gt_bbox", "gender",
           "landmarks"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """One small generated set shared by the read-only tests."""
    root = tmp_path_factory.mktemp("synthetic")
    return root, synthetic.generate(root, **SMALL)


def _gray(root: Path, image: str) -> np.ndarray:
    return cv2.imread(str(root / image), cv2.IMREAD_GRAYSCALE)


def _box(text: str) -> tuple:
    return tuple(int(v) for v in text.split())


def test_same_arguments_give_identical_manifest_and_bytes(tmp_path):
    first = synthetic.generate(tmp_path / "a", **SMALL)
    second = synthetic.generate(tmp_path / "b", **SMALL)
    assert first.equals(second)
    for image in first["image"]:
        assert (tmp_path / "a" / image).read_bytes() == (tmp_path / "b" / image).read_bytes()


def test_an_image_does_not_depend_on_what_else_is_generated(tmp_path, small):
    root, table = small
    one = synthetic.generate(tmp_path, identities=1, repetitions=1, frames=3, progress=False)
    for image in one["image"]:
        assert (tmp_path / image).read_bytes() == (root / image).read_bytes()


def test_manifest_layout_labels_and_frames(small):
    root, table = small
    assert list(table.columns) == COLUMNS
    assert len(table) == 3 * len(synthetic.EXPRESSIONS) * 1 * 3
    assert sorted(table["subject"].unique()) == ["id00", "id01", "id02"]
    assert set(table["label"]) == set(synthetic.EXPRESSIONS)
    assert set(table["source_split"]) == {"all"}
    assert set(table["gender"]) <= {"f", "m"}
    assert table.groupby("subject")["gender"].nunique().eq(1).all()
    for (subject, sequence), seq in table.groupby(["subject", "sequence"]):
        assert sorted(seq["frame"]) == [1, 2, 3]
        assert seq["label"].nunique() == 1 and sequence.startswith(seq["label"].iloc[0] + "_r")
    row = table.iloc[0]
    assert row["image"] == f"{row.subject}/{row.subject}_{row.sequence}/" \
                           f"{row.subject}_{row.sequence}_f{row.frame:02d}.png"
    validate(table)  # the pipeline's data contract


def test_images_are_bgr_frames_with_the_box_inside(small):
    root, table = small
    for row in table.itertuples(index=False):
        image = cv2.imread(str(root / row.image), cv2.IMREAD_UNCHANGED)
        assert image.shape == (240, 320, 3) and image.dtype == np.uint8
        x, y, w, h = _box(row.gt_bbox)
        assert x >= 0 and y >= 0 and x + w <= 320 and y + h <= 240
        assert 0.8 < w / h < 1.25 and 0.25 * 240 < h < 0.75 * 240


def test_frame_size_is_width_by_height(tmp_path):
    table = synthetic.generate(tmp_path, identities=1, repetitions=1, frames=2,
                               frame_size=(200, 160), progress=False)
    assert cv2.imread(str(tmp_path / table["image"].iloc[0])).shape == (160, 200, 3)


def _render(identity, units) -> np.ndarray:
    """A noise-free grey face at a fixed pose, 88x60 pixels around the head centre."""
    pose = synthetic.Pose(centre=(0, 0), scale=40, roll=0, yaw=0, gaze=(0, 0), light=0)
    face, alpha, origin = synthetic.render_face(identity, units, pose)
    gray = cv2.cvtColor(face, cv2.COLOR_BGR2GRAY).astype(np.float32) * alpha
    x, y = int(origin[0]), int(origin[1])
    return gray[y - 40:y + 48, x - 30:x + 30]


def test_identities_differ():
    """Neutral faces of different characters differ substantially, at the same pose."""
    identities = [synthetic.make_identity(i) for i in range(6)]
    faces = [_render(identity, synthetic.ActionUnits()) for identity in identities]
    for i in range(len(faces)):
        for j in range(i + 1, len(faces)):
            assert np.abs(faces[i] - faces[j]).mean() > 15.0, (i, j)
    assert len({identity.hair_style for identity in identities}) >= 4
    assert {identity.gender for identity in identities} == {"f", "m"}


@pytest.mark.parametrize("expression", synthetic.EXPRESSIONS)
def test_expressions_change_brows_or_mouth(expression):
    """The apex differs from the neutral face around the brows/eyes or the mouth."""
    for index in range(3):
        identity = synthetic.make_identity(index)
        neutral = _render(identity, synthetic.ActionUnits())
        apex = _render(identity, synthetic.PROTOTYPES[expression].scaled(identity.gains, 1.0))
        diff = np.abs(apex - neutral)
        brows_and_eyes, mouth = diff[24:44].mean(), diff[58:76].mean()
        assert max(brows_and_eyes, mouth) > 3.0, (index, brows_and_eyes, mouth)
        assert diff[:10].mean() < 0.5  # the crown and hair stay put


def test_action_units_follow_the_facs_prototypes():
    happy, sad = synthetic.PROTOTYPES["happiness"], synthetic.PROTOTYPES["sadness"]
    assert happy.au12 > 0.5 and happy.au6 > 0.5 and happy.au15 == 0
    assert sad.au15 > 0.5 and sad.au1 > 0.5 and sad.au12 == 0
    assert synthetic.blend(synthetic.PROTOTYPES["surprise"], 0.0) == synthetic.ActionUnits()
    assert synthetic.ease(0.0) == 0.0 and synthetic.ease(1.0) == 1.0


def test_haar_cascade_finds_the_faces(small):
    """The face stage's real detector finds the face, where gt_bbox says it is."""
    root, table = small
    detector = HaarDetector(min_face=40)
    hits = 0
    for row in table.itertuples(index=False):
        boxes = detector(_gray(root, row.image))
        hits += bool(boxes) and iou(boxes[0], _box(row.gt_bbox)) >= 0.5
    assert hits / len(table) >= 0.9


def test_landmarks_lie_inside_the_face_box(small):
    """All 68 points sit within the gt box (grown by 5% for the jaw), in iBUG's layout."""
    root, table = small
    for row in table.itertuples(index=False):
        points = parse_landmarks(row.landmarks)
        x, y, w, h = _box(row.gt_bbox)
        assert (points[:, 0] > x - 0.05 * w).all() and (points[:, 0] < x + 1.05 * w).all()
        assert (points[:, 1] > y - 0.05 * h).all() and (points[:, 1] < y + 1.05 * h).all()
        centre = lambda part: points[part].mean(0)  # noqa: E731
        brows, eyes = centre(slice(17, 27)), centre(slice(36, 48))
        nose_tip, mouth, chin = points[30], centre(slice(48, 68)), points[8]
        assert brows[1] < eyes[1] < nose_tip[1] < mouth[1] < chin[1]
        left_eye, right_eye = (centre(part) for part in EYE_POINTS)
        assert left_eye[0] < nose_tip[0] < right_eye[0]


def test_eye_points_lie_on_the_dark_eyes(small):
    """Each eye contour encloses the dark iris and lids: its darkest pixels are far below skin."""
    root, table = small
    for row in table.itertuples(index=False):
        gray = _gray(root, row.image)
        points = parse_landmarks(row.landmarks)
        x, y, w, h = _box(row.gt_bbox)
        skin = np.median(gray[y + h // 2:y + 3 * h // 4, x + w // 3:x + 2 * w // 3])
        for part in EYE_POINTS:
            inside = np.zeros_like(gray)
            cv2.fillPoly(inside, [np.rint(points[part]).astype(np.int32)], 1)
            assert np.percentile(gray[inside > 0], 10) < 0.6 * skin, row.image


def test_landmarks_follow_the_pose():
    """Turning the head turns its landmarks by the same angle about the head centre."""
    identity = synthetic.make_identity(0)
    units = synthetic.ActionUnits()
    upright = synthetic.Pose(centre=(100, 100), scale=50, roll=0, yaw=0, gaze=(0, 0), light=0)
    turned = synthetic.Pose(centre=(100, 100), scale=50, roll=20, yaw=0, gaze=(0, 0), light=0)
    a, b = (synthetic.face_landmarks(identity, units, pose) for pose in (upright, turned))
    angle = np.radians(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    assert np.allclose((a - 100) @ rotation.T + 100, b, atol=1e-6)
