"""Offline augmentation of the training part of a fold, and nothing else.

Each augmented copy is drawn from its own generator seeded by (seed, fold, uid, copy), so the
images do not depend on processing order and the same config always yields the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd


@dataclass(frozen=True)
class AugmentOptions:
    """Mirror of the config's `augment:` block (MobileNet-paper crops, DAM-CNN noise)."""

    copies: int = 3
    crop_scale: tuple[float, float] = (0.85, 1.0)
    flip: bool = True
    rotate_deg: float = 5.0
    noise_std: float = 3.0

    @classmethod
    def from_config(cls, block: dict) -> "AugmentOptions":
        return cls(**{**block, "crop_scale": tuple(block.get("crop_scale", (0.85, 1.0)))})


#: Augment-table columns that fix each copy's geometry, so a channel aligned with the face
#: (its AU attention map) can be moved exactly as the face was (`apply_geometry`).
GEOMETRY = ("crop_x", "crop_y", "crop_side", "flip", "rotation")
IDENTITY = dict(zip(GEOMETRY, (0, 0, 0, 0, 0.0)))  # crop_side 0: the whole image


def draw_geometry(size: int, options: AugmentOptions, rng: np.random.Generator) -> dict:
    """A random crop covering `crop_scale` of the side, a coin-flip mirror, a small rotation."""
    side = max(8, int(round(size * rng.uniform(*options.crop_scale))))
    x0 = int(rng.integers(0, size - side + 1))
    y0 = int(rng.integers(0, size - side + 1))
    flipped = int(bool(options.flip and rng.random() < 0.5))
    angle = float(rng.uniform(-options.rotate_deg, options.rotate_deg))
    return dict(zip(GEOMETRY, (x0, y0, side, flipped, round(angle, 4))))


def apply_geometry(image: np.ndarray, geometry: dict) -> np.ndarray:
    """Crop, resize back, mirror and rotate a square image as `geometry` says."""
    size = image.shape[0]
    side = int(geometry["crop_side"]) or size
    x0, y0 = int(geometry["crop_x"]), int(geometry["crop_y"])
    out = image
    if side != size:
        out = cv2.resize(image[y0:y0 + side, x0:x0 + side], (size, size),
                         interpolation=cv2.INTER_LINEAR)
    if int(geometry["flip"]):
        out = cv2.flip(out, 1)
    if float(geometry["rotation"]):
        matrix = cv2.getRotationMatrix2D((size / 2.0, size / 2.0), float(geometry["rotation"]), 1.0)
        out = cv2.warpAffine(out, matrix, (size, size), borderMode=cv2.BORDER_REFLECT_101)
    return out


def augment_one(face: np.ndarray, options: AugmentOptions, rng: np.random.Generator):
    """One random geometry + Gaussian pixel noise; returns (image, geometry)."""
    geometry = draw_geometry(face.shape[0], options, rng)
    out = apply_geometry(face, geometry)
    if options.noise_std > 0:
        noisy = out.astype(np.float32) + rng.normal(0.0, options.noise_std, out.shape)
        out = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    return out, geometry


def augment_fold(faces: np.ndarray, folds: pd.DataFrame, fold: int, options: AugmentOptions,
                 seed: int):
    """Original + `copies` augmented versions of every *training* face of one fold.

    Validation and test faces are never touched: the table records the source uid of every
    image so the leak check can follow augmented copies back to their subject, and the
    geometry of every copy (GEOMETRY columns).
    """
    train = folds[(folds["fold"] == fold) & (folds["role"] == "train")]
    # Filled in place: a list of images stacked at the end would hold them all twice.
    array = np.empty((len(train) * (options.copies + 1),) + faces.shape[1:], np.uint8)
    rows = []
    for row in train.itertuples(index=False):
        face = faces[row.uid]
        array[len(rows)] = face
        rows.append({"uid": row.uid, "label": row.label, "subject": row.subject, "copy": 0,
                     **IDENTITY})
        for copy in range(1, options.copies + 1):
            rng = np.random.default_rng([seed, fold, int(row.uid), copy])
            array[len(rows)], geometry = augment_one(face, options, rng)
            rows.append({"uid": row.uid, "label": row.label, "subject": row.subject,
                         "copy": copy, **geometry})
    table = pd.DataFrame(rows, columns=["uid", "label", "subject", "copy", *GEOMETRY])
    return array, table
