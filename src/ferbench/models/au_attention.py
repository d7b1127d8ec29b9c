"""AU-aware attention maps from 68 facial landmarks (E2-Capsnet Eq. 1, DE-Capsnet Eq. 1).

E2-Capsnet follows EAC-Net (Li et al. 2018): the face is brought to 100x100 pixels, AU
centres are landmarks or landmarks shifted by a multiple of a `scale` (the distance between
the inner eye corners), each centre owns the 15x15 square of pixels within 7 of it, a pixel of
that square weighs W_a = 1 - 0.07 * d_m (d_m: Manhattan distance to the centre, so 1 at the
centre and 0.02 at the square's corners), overlapping squares take the maximum and pixels
outside every square weigh 0.

AU centres (EAC-Net Table 1; iBUG 68-point indices counted from 0; "above" is -y in the
aligned face; one centre per side, one for midline AUs; AUs sharing a centre are listed once):

    AU1   inner brow raiser     inner brow ends (21, 22), 1/2 scale above
    AU2   outer brow raiser     outer brow ends (17, 26), 1/3 scale above
    AU4   brow lowerer          brow centres (19, 24), 1/3 scale below
    AU6   cheek raiser          eye bottoms (mean 40-41, mean 46-47), 1 scale below
    AU7   lid tightener         eye centres (mean 36-41, mean 42-47)
    AU10  upper lip raiser      upper lip centre (51)
    AU12, AU14, AU15            lip corners (48, 54)
    AU17  chin raiser           lower lip bottom (57), 1/2 scale below
    AU23, AU24                  lip centre (mean of 62, 66)

Faces without landmarks (any NaN, the landmarks stage's mark of a miss) get a uniform map of
ones: the attended branch then carries the plain features instead of dropping the face.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

#: Side of the canvas the paper draws the map on; AU squares and weights are in its pixels.
CANVAS = 100
#: Pixels on each side of an AU centre that belong to its area (a 15x15 square).
AU_RADIUS = 7
#: Weight lost per unit of Manhattan distance to the centre (Eq. 1).
WEIGHT_DECAY_PER_PIXEL = 0.07

#: (AUs, landmark indices averaged into the anchor, vertical shift in scales; + is down).
AU_CENTRES: tuple[tuple[str, tuple[int, ...], float], ...] = (
    ("AU1", (21,), -1 / 2), ("AU1", (22,), -1 / 2),
    ("AU2", (17,), -1 / 3), ("AU2", (26,), -1 / 3),
    ("AU4", (19,), 1 / 3), ("AU4", (24,), 1 / 3),
    ("AU6", (40, 41), 1.0), ("AU6", (46, 47), 1.0),
    ("AU7", (36, 37, 38, 39, 40, 41), 0.0), ("AU7", (42, 43, 44, 45, 46, 47), 0.0),
    ("AU10", (51,), 0.0),
    ("AU12/14/15", (48,), 0.0), ("AU12/14/15", (54,), 0.0),
    ("AU17", (57,), 1 / 2),
    ("AU23/24", (62, 66), 0.0),
)
INNER_EYE_CORNERS = (39, 42)


def au_centres(landmarks: np.ndarray) -> np.ndarray:
    """(len(AU_CENTRES), 2) x, y centres for 68 landmarks, in the landmarks' own pixels."""
    points = np.asarray(landmarks, dtype=np.float64)
    scale = np.linalg.norm(points[INNER_EYE_CORNERS[0]] - points[INNER_EYE_CORNERS[1]])
    return np.array([points[list(anchor)].mean(axis=0) + (0.0, shift * scale)
                     for _, anchor, shift in AU_CENTRES])


def canvas_map(centres: np.ndarray) -> np.ndarray:
    """The CANVAS x CANVAS map of Eq. 1 for centres given in canvas pixels."""
    offsets = np.arange(-AU_RADIUS, AU_RADIUS + 1)
    square = 1.0 - WEIGHT_DECAY_PER_PIXEL * (np.abs(offsets)[:, None] + np.abs(offsets)[None, :])
    canvas = np.zeros((CANVAS, CANVAS), dtype=np.float32)
    for cx, cy in np.rint(centres).astype(int):
        rows, cols = cy + offsets, cx + offsets
        inside_rows, inside_cols = (rows >= 0) & (rows < CANVAS), (cols >= 0) & (cols < CANVAS)
        window = np.ix_(rows[inside_rows], cols[inside_cols])
        canvas[window] = np.maximum(canvas[window], square[np.ix_(inside_rows, inside_cols)])
    return canvas


def attention_map(landmarks: np.ndarray, face_side: float, size: int) -> np.ndarray:
    """(size, size) float32 attention map in [0, 1] of a face crop of side `face_side`.

    `landmarks` is (68, 2) x, y in the crop's pixels. The map is drawn on the paper's 100x100
    canvas and resized (bilinear, antialiased) to `size`.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (68, 2):
        raise ValueError(f"expected (68, 2) landmarks, got {points.shape}")
    if np.isnan(points).any():
        return np.ones((size, size), dtype=np.float32)
    canvas = canvas_map(au_centres(points) * (CANVAS / face_side))
    if size == CANVAS:
        return canvas
    resized = F.interpolate(torch.from_numpy(canvas)[None, None], size=(size, size),
                            mode="bilinear", align_corners=False, antialias=True)
    return resized[0, 0].clamp(0, 1).numpy()


def attention_maps(landmarks: np.ndarray, face_side: float, size: int) -> np.ndarray:
    """(N, size, size) float32 maps for (N, 68, 2) landmarks, one per face."""
    return np.stack([attention_map(points, face_side, size) for points in landmarks]) \
        if len(landmarks) else np.zeros((0, size, size), dtype=np.float32)
