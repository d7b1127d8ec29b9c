"""The model's extra input channels: AU attention maps drawn from landmarks, moved with
the face through each augmented copy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ferbench import augment, inputs
from ferbench.models.au_attention import attention_map

SIDE = 48


def landmarks(n: int) -> np.ndarray:
    """n faces' 68 points: a loose grid inside the crop, shifted per face."""
    rng = np.random.default_rng(0)
    base = np.stack(np.meshgrid(np.linspace(12, 36, 17), np.linspace(14, 34, 4)), -1)
    base = base.reshape(-1, 2)[:68]
    return np.stack([base + rng.uniform(-2, 2, 2) for _ in range(n)])


def test_faces_pass_through_when_the_model_takes_no_extra_channel():
    faces = np.zeros((3, SIDE, SIDE), np.uint8)
    assert inputs.stack_channels(faces, ()) is faces


def test_au_map_is_the_second_channel_and_scaled_to_uint8():
    faces = np.full((2, SIDE, SIDE), 7, np.uint8)
    points = landmarks(2)
    stacked = inputs.stack_channels(faces, ("au_attention",), [1, 0], points)
    assert stacked.shape == (2, 2, SIDE, SIDE) and stacked.dtype == np.uint8
    assert (stacked[:, 0] == 7).all()
    expected = np.rint(attention_map(points[1], SIDE, SIDE) * 255)
    assert np.array_equal(stacked[0, 1], expected)  # uid 1's landmarks, not row 0's
    assert 0 < stacked[:, 1].mean() < 255


def test_a_face_without_landmarks_gets_a_uniform_map():
    faces = np.zeros((2, SIDE, SIDE), np.uint8)
    stacked = inputs.stack_channels(faces, ("au_attention",), [-1, 0], landmarks(1))
    assert (stacked[0, 1] == 255).all() and not (stacked[1, 1] == 255).all()


def test_maps_follow_each_copy_geometry():
    faces = np.zeros((2, SIDE, SIDE), np.uint8)
    points = landmarks(1)
    geometry = pd.DataFrame([augment.IDENTITY,
                             {"crop_x": 0, "crop_y": 0, "crop_side": 0, "flip": 1,
                              "rotation": 0.0}])
    stacked = inputs.stack_channels(faces, ("au_attention",), [0, 0], points, geometry)
    assert np.array_equal(stacked[1, 1], stacked[0, 1][:, ::-1])


def test_unknown_channel_and_missing_landmarks_are_refused():
    faces = np.zeros((1, SIDE, SIDE), np.uint8)
    with pytest.raises(ValueError, match="no input channel depth"):
        inputs.stack_channels(faces, ("depth",), [0], landmarks(1))
    with pytest.raises(ValueError, match="landmarks"):
        inputs.stack_channels(faces, ("au_attention",), [0])


def test_gender_groups_follow_the_face_index_and_refuse_missing_genders():
    table = pd.DataFrame({"face_index": [0, -1, 1, 2], "gender": ["m", "f", "f", ""]})
    assert inputs.gender_groups(table, [1, 0, 2, -1]).tolist() == [0, 1, -1, -1]
    with pytest.raises(ValueError, match="gender column"):
        inputs.gender_groups(table.assign(gender=""), [0])


def test_sequence_indices_share_one_index_per_subject_sequence():
    """Frames of one sequence and augmented copies of one face (same uid) share an index;
    the same sequence name under another subject is another sequence; no source face: -1."""
    folds = pd.DataFrame({"uid": [0, 1, 2, 3, 0], "subject": ["S1", "S1", "S2", "S2", "S1"],
                          "sequence": ["001", "001", "001", "002", "001"]})
    indices = inputs.sequence_indices(folds, [0, 1, 2, 3, -1, 0])
    assert indices[0] == indices[1] == indices[5] and indices[4] == -1
    assert len({indices[0], indices[2], indices[3]}) == 3
