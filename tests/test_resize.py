"""ferbench.resize: area averaging to shrink, bicubic to enlarge, wherever a face is resized."""

from __future__ import annotations

import cv2
import numpy as np

from ferbench import faces
from ferbench.resize import resize
from ferbench.train import Split

#: A 64 px horizontal ramp rising by 4 grey levels per pixel (0 ... 252).
RAMP = np.tile((np.arange(64) * 4).astype(np.uint8), (64, 1))


def ramp_error_and_repeats(row: np.ndarray) -> tuple[float, float]:
    """Largest deviation from the exact ramp away from the borders, and the share of pixels
    equal to their left neighbour (a nearest-neighbour copy repeats each source pixel)."""
    side = len(row)
    source_x = (np.arange(side) + 0.5) * 64 / side - 0.5  # OpenCV's pixel-centre mapping
    inner = slice(8, -8)
    error = np.abs(row[inner].astype(float) - 4 * source_x[inner]).max()
    return error, float((np.diff(row.astype(int)) == 0).mean())


def test_a_64_px_face_enlarged_to_224_is_smooth_not_blocky():
    """Split.from_arrays (every model's input) and a VGG's 224 px: bicubic follows the ramp
    to within a grey level; INTER_AREA, used before, repeated each source pixel 3-4 times."""
    enlarged = Split.from_arrays(RAMP[None], [0], 224).images[0, 0].numpy()
    error, repeats = ramp_error_and_repeats(enlarged[32])
    assert error < 1.0 and repeats < 0.25  # 1.14 levels a pixel: a few round alike
    blocky = cv2.resize(RAMP, (224, 224), interpolation=cv2.INTER_AREA)  # the old resize
    old_error, old_repeats = ramp_error_and_repeats(blocky[32])
    assert old_error > 1.0 and old_repeats > 0.5


def test_every_channel_is_enlarged_alike():
    stacked = np.stack([RAMP, 255 - RAMP])[None]
    images = Split.from_arrays(stacked, [0], 224).images[0].numpy()
    np.testing.assert_array_equal(images[0], resize(RAMP, 224))
    np.testing.assert_array_equal(images[1], resize(255 - RAMP, 224))


def test_shrinking_averages_areas():
    checker = (np.indices((128, 128)).sum(0) % 2 * 255).astype(np.uint8)
    small = resize(checker, 64)
    np.testing.assert_array_equal(small, cv2.resize(checker, (64, 64),
                                                    interpolation=cv2.INTER_AREA))
    assert np.ptp(small) <= 1  # one grey, no aliasing
    assert resize(checker, 128) is checker


def test_a_small_face_crop_is_enlarged_smoothly():
    """The face stage (and `ferbench live`, which shares preprocess_face) enlarges a face
    smaller than the configured size with the same filter."""
    options = faces.FaceOptions(size=224, margin=0.0, align=False, normalise="none")
    crop = faces.crop_face(np.dstack([RAMP] * 3), (0, 0, 64, 64), options)
    error, repeats = ramp_error_and_repeats(crop[32])
    assert error < 1.0 and repeats < 0.25  # 1.14 levels a pixel: a few round alike
