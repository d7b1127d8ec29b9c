"""The paper's classifier (§3.5): a projection B of the mean-subtracted face (mean b) and the
nearest class template in that space, trained on one fold's training faces.

B is Fisherfaces-style: PCA of the training faces, then LDA inside the PCA space. The class
decision, the nearest class mean by Euclidean distance (Eq. 11), is the argmax of linear
scores 2 m_i^T a - |m_i|^2 (|a|^2 is the same for every class), so the whole classifier is
one affine map of the pixels, scores = W x + c, which is what the private protocol evaluates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import scipy.linalg

#: Side of the square greyscale face the classifier reads (downscaled from faces.npy).
DEFAULT_SIZE = 24
#: PCA components kept before LDA (capped by the number of training faces).
DEFAULT_COMPONENTS = 30
#: Ridge added to the within-class scatter, relative to its mean eigenvalue.
RIDGE = 1e-3


@dataclass(frozen=True)
class LinearFaceClassifier:
    """mean b (pixels in [0, 1]), projection B (pixels x dims), class means in B's space."""

    labels: tuple[str, ...]
    size: int
    mean: np.ndarray
    projection: np.ndarray
    class_means: np.ndarray

    @property
    def pixels(self) -> int:
        return self.size * self.size

    def preprocess(self, faces: np.ndarray) -> np.ndarray:
        """Face crops (N, H, W) or (N, H, W, 3) uint8 -> (N, size*size) uint8 pixels."""
        return preprocess(faces, self.size)

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(W, c) with scores = W @ pixels + c on raw uint8 pixels (Eqs. 6, 9, 11 folded)."""
        templates = self.class_means @ self.projection.T  # (classes, pixels)
        weights = 2.0 * templates / 255.0
        offsets = -2.0 * templates @ self.mean - np.sum(self.class_means ** 2, axis=1)
        return weights, offsets

    def scores(self, pixels: np.ndarray) -> np.ndarray:
        weights, offsets = self.affine()
        return np.asarray(pixels, dtype=np.float64) @ weights.T + offsets

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        return np.argmax(self.scores(pixels), axis=1)

    def save(self, path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, labels=np.array(self.labels), size=self.size, mean=self.mean,
                 projection=self.projection, class_means=self.class_means)

    @classmethod
    def load(cls, path) -> LinearFaceClassifier:
        with np.load(path, allow_pickle=False) as data:
            return cls(tuple(str(label) for label in data["labels"]), int(data["size"]),
                       data["mean"], data["projection"], data["class_means"])


def preprocess(faces: np.ndarray, size: int) -> np.ndarray:
    """Greyscale, resize to size x size (area averaging), flatten: what both parties agree
    a face is. Already-aligned crops (faces.npy rows, or same-size images) need nothing else."""
    faces = np.asarray(faces)
    if faces.ndim == 4:
        faces = np.stack([cv2.cvtColor(face, cv2.COLOR_BGR2GRAY) for face in faces])
    if faces.ndim != 3:
        raise ValueError(f"expected faces (N, H, W) or (N, H, W, 3), got shape {faces.shape}")
    resized = [cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA) for face in faces]
    return np.stack(resized).reshape(len(faces), size * size).astype(np.uint8)


def train(faces: np.ndarray, labels: np.ndarray, label_names, size: int = DEFAULT_SIZE,
          components: int = DEFAULT_COMPONENTS) -> LinearFaceClassifier:
    """Fit b, B (PCA then LDA) and the class means on training faces; `labels` index
    `label_names`."""
    labels = np.asarray(labels)
    classes = len(label_names)
    if set(np.unique(labels)) != set(range(classes)):
        raise ValueError(f"training faces must cover all {classes} classes")
    x = preprocess(faces, size).astype(np.float64) / 255.0
    mean = x.mean(axis=0)
    centred = x - mean
    kept = max(1, min(components, len(x) - classes, x.shape[1]))
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    pca = vt[:kept].T
    reduced = centred @ pca
    means = np.stack([reduced[labels == k].mean(axis=0) for k in range(classes)])
    within = sum((reduced[labels == k] - means[k]).T @ (reduced[labels == k] - means[k])
                 for k in range(classes))
    within += RIDGE * np.trace(within) / kept * np.eye(kept)
    counts = np.bincount(labels, minlength=classes)
    between = (means * counts[:, None]).T @ means
    _, vectors = scipy.linalg.eigh(between, within)
    lda = vectors[:, ::-1][:, :classes - 1]
    projection = pca @ lda
    class_means = means @ lda
    return LinearFaceClassifier(tuple(label_names), size, mean, projection, class_means)
