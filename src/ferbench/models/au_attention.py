"""AU-aware attention maps from 68 facial landmarks (E2-Capsnet Eq. 1, DE-Capsnet Eq. 1).

E2-Capsnet follows EAC-Net (Li, Abtahi, Zhu & Yin, TPAMI 2018): the face is brought to
100x100 pixels, AU centres are landmarks or landmarks shifted by a multiple of a `scale` (the
distance between the inner eye corners), each centre owns the 15x15 square of pixels within 7
of it, a pixel of that square weighs W_a = 1 - 0.07 * d_m (d_m: Manhattan distance to the
centre, so 1 at the centre and 0.02 at the square's corners), overlapping squares take the
maximum and pixels outside every square weigh 0.

AU centres: the 20 of EAC-Net, ten AU regions with one centre on each side of the face, as
the EAC-Net authors define them for 68 dlib (iBUG, CK+) landmarks in `get_au_tg_dlib` of
`get_attention_map_dlib.py` (github.com/wiibrew/EAC-Net, Wei Li's code). That code already
uses iBUG indices counted from 0, the order the landmarks stage writes, so no index mapping
from IntraFace's 49 points is needed; the table below is re-derived from it. "above" is -y
in the face crop, shifts are in scales:

    AU1       inner brow raiser    inner brow ends 21, 22, 1/2 scale above
    AU2       outer brow raiser    outer brows 18, 25, 1/3 scale above
    AU4       brow lowerer         brow centres 19, 24, 1/3 scale below
    AU6       cheek raiser         lower eyelids 41, 46, 1 scale below
    AU7       lid tightener        upper eyelids 38, 43
    AU10      upper lip raiser     upper lip 49, 53 (either side of its centre)
    AU12/14   lip corners          48, 54
    AU17      chin raiser          upper and lower lip centres 51, 57
    AU23/24   lip tightener/press  inner upper lip 61, 63
    AU23      (second region)      lower lip 56, 58, 1/2 scale below

The scale is the Euclidean inner-corner distance (landmarks 39, 42), the paper's words; the
authors' code measures it along x only, the same on the face stage's levelled faces. Their
code truncates centres to whole pixels and draws a 14x14 square; here centres are rounded and
the square is the 15x15 that E2-Capsnet states.

Faces without landmarks (any NaN, the landmarks stage's mark of a miss) get a uniform map of
ones: the attended branch then carries the plain features instead of dropping the face.
"""

from __future__ import annotations

import numpy as np

from ferbench.resize import resize

#: Side of the canvas the paper draws the map on; AU squares and weights are in its pixels.
CANVAS = 100
#: Pixels on each side of an AU centre that belong to its area (a 15x15 square).
AU_RADIUS = 7
#: Weight lost per unit of Manhattan distance to the centre (Eq. 1).
WEIGHT_DECAY_PER_PIXEL = 0.07

#: (AUs, landmark, vertical shift in scales; + is down): EAC-Net's 20 centres, one per side.
AU_CENTRES: tuple[tuple[str, int, float], ...] = (
    ("AU1", 21, -1 / 2), ("AU1", 22, -1 / 2),
    ("AU2", 18, -1 / 3), ("AU2", 25, -1 / 3),
    ("AU4", 19, 1 / 3), ("AU4", 24, 1 / 3),
    ("AU6", 41, 1.0), ("AU6", 46, 1.0),
    ("AU7", 38, 0.0), ("AU7", 43, 0.0),
    ("AU10", 49, 0.0), ("AU10", 53, 0.0),
    ("AU12/14", 48, 0.0), ("AU12/14", 54, 0.0),
    ("AU17", 51, 0.0), ("AU17", 57, 0.0),
    ("AU23/24", 61, 0.0), ("AU23/24", 63, 0.0),
    ("AU23", 56, 1 / 2), ("AU23", 58, 1 / 2),
)
INNER_EYE_CORNERS = (39, 42)


def au_centres(landmarks: np.ndarray) -> np.ndarray:
    """(len(AU_CENTRES), 2) x, y centres for 68 landmarks, in the landmarks' own pixels."""
    points = np.asarray(landmarks, dtype=np.float64)
    scale = np.linalg.norm(points[INNER_EYE_CORNERS[0]] - points[INNER_EYE_CORNERS[1]])
    return np.array([points[landmark] + (0.0, shift * scale)
                     for _, landmark, shift in AU_CENTRES])


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
    canvas and resized to `size` like a face (ferbench.resize).
    """
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (68, 2):
        raise ValueError(f"expected (68, 2) landmarks, got {points.shape}")
    if np.isnan(points).any():
        return np.ones((size, size), dtype=np.float32)
    canvas = canvas_map(au_centres(points) * (CANVAS / face_side))
    return np.clip(resize(canvas, size), 0.0, 1.0)  # bicubic overshoots the squares' edges


def attention_maps(landmarks: np.ndarray, face_side: float, size: int) -> np.ndarray:
    """(N, size, size) float32 maps for (N, 68, 2) landmarks, one per face."""
    return np.stack([attention_map(points, face_side, size) for points in landmarks]) \
        if len(landmarks) else np.zeros((0, size, size), dtype=np.float32)
