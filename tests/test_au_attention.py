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
    """A synthetic 68-point face in a 200x200 crop: inner eye corners 40 px apart, every
    other landmark at the crop's centre."""
    points = np.full((68, 2), 100.0)
    points[39], points[42] = (80, 80), (120, 80)
    points[21] = (90, 60)
    points[57] = (100, 150)
    return points


def test_centres_are_eac_nets_twenty_shifted_by_the_inner_eye_corner_distance():
    """EAC-Net's 20 centres (get_au_tg_dlib, 68 iBUG points): one landmark each, shifted by
    a multiple of the 40 px inner-corner distance."""
    points = np.array([(k, 100.0 + k) for k in range(68)])
    points[39], points[42] = (80, 80), (120, 80)
    third = 40 / 3
    expected = [(21, 101), (22, 102),                      # AU1: 1/2 scale above 21, 22
                (18, 118 - third), (25, 125 - third),      # AU2: 1/3 scale above 18, 25
                (19, 119 + third), (24, 124 + third),      # AU4: 1/3 scale below 19, 24
                (41, 181), (46, 186),                      # AU6: 1 scale below 41, 46
                (38, 138), (43, 143), (49, 149), (53, 153),  # AU7, AU10
                (48, 148), (54, 154), (51, 151), (57, 157),  # AU12/14, AU17
                (61, 161), (63, 163),                      # AU23/24: inner upper lip
                (56, 176), (58, 178)]                      # AU23: 1/2 scale below 56, 58
    assert len(AU_CENTRES) == 20
    np.testing.assert_allclose(au_centres(points), expected)


def test_attention_map_scales_the_face_to_the_100_pixel_canvas():
    amap = attention_map(face_landmarks(), face_side=200, size=100)
    assert amap.dtype == np.float32 and amap.shape == (100, 100)
    assert amap[20, 45] == pytest.approx(1.0)  # AU1 centre (90, 40) at half scale
    assert amap[75, 50] == pytest.approx(1.0)  # AU17 centre: landmark 57 (100, 150)
    small = attention_map(face_landmarks(), face_side=200, size=28)
    assert small.shape == (28, 28) and 0 <= small.min() and small.max() <= 1


def test_missing_landmarks_give_a_uniform_map():
    points = face_landmarks()
    points[5] = np.nan
    assert np.array_equal(attention_map(points, 200, 32), np.ones((32, 32), np.float32))
    maps = attention_maps(np.stack([face_landmarks(), points]), 200, 16)
    assert maps.shape == (2, 16, 16) and maps[1].min() == 1.0 and maps[0].min() == 0.0
