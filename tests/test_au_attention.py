"""AU attention maps (E2-Capsnet Eq. 1) against hand-computed weights."""

from __future__ import annotations

import numpy as np
import pytest

from ferbench.models.au_attention import (AU_CENTRES, attention_map, attention_maps, au_centres,
                                          canvas_map)


def test_weight_is_one_at_the_centre_and_falls_by_0_07_per_manhattan_step():
    canvas = canvas_map(np.array([[50.0, 50.0]]))  # x, y
    assert canvas[50, 50] == pytest.approx(1.0)
    assert canvas[51, 52] == pytest.approx(1 - 0.07 * 3)  # 0.79
    assert canvas[57, 57] == pytest.approx(1 - 0.07 * 14)  # corner of the 15x15 square: 0.02
    assert canvas[50, 58] == 0.0 and canvas[43, 50] == pytest.approx(0.51)  # 8 px out, 7 in
    assert np.count_nonzero(canvas) == 15 * 15


def test_overlapping_areas_take_the_maximum():
    canvas = canvas_map(np.array([[40.0, 50.0], [44.0, 50.0]]))
    assert canvas[50, 42] == pytest.approx(0.86)  # 2 from both centres
    assert canvas[50, 43] == pytest.approx(0.93)  # max(0.79, 0.93)
    assert canvas[50, 36] == pytest.approx(1 - 0.07 * 4)  # only the first square reaches here


def test_squares_are_clipped_at_the_border():
    canvas = canvas_map(np.array([[1.0, 98.0]]))
    assert canvas[98, 1] == pytest.approx(1.0) and canvas[99, 0] == pytest.approx(0.86)


def face_landmarks() -> np.ndarray:
    """A synthetic 68-point face in a 200x200 crop: inner eye corners 40 px apart."""
    points = np.full((68, 2), 100.0)
    points[39], points[42] = (80, 80), (120, 80)
    points[21] = (90, 60)
    points[57] = (100, 150)
    return points


def test_centres_shift_by_the_inner_eye_corner_distance():
    centres = au_centres(face_landmarks())
    labels = [label for label, _, _ in AU_CENTRES]
    assert centres[labels.index("AU1")] == pytest.approx((90, 60 - 20))   # 1/2 scale above
    assert centres[labels.index("AU17")] == pytest.approx((100, 150 + 20))  # 1/2 scale below
    assert centres[labels.index("AU4")] == pytest.approx((100, 100 + 40 / 3))


def test_attention_map_scales_the_face_to_the_100_pixel_canvas():
    amap = attention_map(face_landmarks(), face_side=200, size=100)
    assert amap.dtype == np.float32 and amap.shape == (100, 100)
    assert amap[20, 45] == pytest.approx(1.0)  # AU1 centre (90, 40) at half scale
    assert amap[85, 50] == pytest.approx(1.0)  # AU17 centre (100, 170) at half scale
    small = attention_map(face_landmarks(), face_side=200, size=28)
    assert small.shape == (28, 28) and 0 <= small.min() and small.max() <= 1


def test_missing_landmarks_give_a_uniform_map():
    points = face_landmarks()
    points[5] = np.nan
    assert np.array_equal(attention_map(points, 200, 32), np.ones((32, 32), np.float32))
    maps = attention_maps(np.stack([face_landmarks(), points]), 200, 16)
    assert maps.shape == (2, 16, 16) and maps[1].min() == 1.0 and maps[0].min() == 0.0
