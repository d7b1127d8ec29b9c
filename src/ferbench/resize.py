"""The one resize every face and input channel goes through: the filter follows the direction.

`cv2.INTER_AREA` averages the source pixels under each output pixel, the right filter for
shrinking (a large crop down to the face size: no aliasing). Enlarging with it degenerates to
nearest-neighbour: a 64 px face fed to a 224 px VGG would be a blocky 3.5x copy whose block
edges the first convs see as structure. Enlarging therefore uses bicubic interpolation
(`cv2.INTER_CUBIC`) rather than bilinear: at 3.5x bilinear leaves a crease at every source
pixel (its slope jumps there) and softens edges over a 3.5 px ramp, while bicubic keeps the
slope continuous and edges sharper; its slight overshoot at hard edges is clipped to the
uint8 range by OpenCV (and to [0, 1] by callers resizing float maps).
"""

from __future__ import annotations

import cv2
import numpy as np


def interpolation(source: tuple[int, int], target: tuple[int, int]) -> int:
    """OpenCV's flag for resizing (height, width) `source` to `target`: area unless enlarging."""
    return cv2.INTER_AREA if target[0] <= source[0] and target[1] <= source[1] \
        else cv2.INTER_CUBIC


def resize(image: np.ndarray, width: int, height: int | None = None) -> np.ndarray:
    """`image` (H, W) or (H, W, C) at width x height (square when `height` is omitted)."""
    height = width if height is None else height
    if image.shape[:2] == (height, width):
        return image
    return cv2.resize(image, (width, height),
                      interpolation=interpolation(image.shape[:2], (height, width)))
