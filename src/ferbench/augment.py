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


def augment_one(face: np.ndarray, options: AugmentOptions, rng: np.random.Generator):
    """One random crop + flip + small rotation + Gaussian noise; returns (image, description)."""
    size = face.shape[0]
    scale = rng.uniform(*options.crop_scale)
    side = max(8, int(round(size * scale)))
    x0 = int(rng.integers(0, size - side + 1))
    y0 = int(rng.integers(0, size - side + 1))
    out = cv2.resize(face[y0:y0 + side, x0:x0 + side], (size, size), interpolation=cv2.INTER_LINEAR)
    flipped = bool(options.flip and rng.random() < 0.5)
    if flipped:
        out = cv2.flip(out, 1)
    angle = float(rng.uniform(-options.rotate_deg, options.rotate_deg))
    if angle:
        matrix = cv2.getRotationMatrix2D((size / 2.0, size / 2.0), angle, 1.0)
        out = cv2.warpAffine(out, matrix, (size, size), borderMode=cv2.BORDER_REFLECT_101)
    if options.noise_std > 0:
        noisy = out.astype(np.float32) + rng.normal(0.0, options.noise_std, out.shape)
        out = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    return out, f"crop={x0},{y0},{side} flip={int(flipped)} rot={angle:.2f}"


def augment_fold(faces: np.ndarray, folds: pd.DataFrame, fold: int, options: AugmentOptions,
                 seed: int):
    """Original + `copies` augmented versions of every *training* face of one fold.

    Validation and test faces are never touched: the table records the source uid of every
    image so the leak check can follow augmented copies back to their subject.
    """
    train = folds[(folds["fold"] == fold) & (folds["role"] == "train")]
    images, rows = [], []
    for row in train.itertuples(index=False):
        face = faces[row.uid]
        images.append(face)
        rows.append((row.uid, row.label, row.subject, 0, "original"))
        for copy in range(1, options.copies + 1):
            rng = np.random.default_rng([seed, fold, int(row.uid), copy])
            image, description = augment_one(face, options, rng)
            images.append(image)
            rows.append((row.uid, row.label, row.subject, copy, description))
    table = pd.DataFrame(rows, columns=["uid", "label", "subject", "copy", "augmentation"])
    array = np.stack(images) if images else np.zeros((0,) + faces.shape[1:], np.uint8)
    return array, table
