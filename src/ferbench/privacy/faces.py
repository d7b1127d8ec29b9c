"""Small labelled face sets drawn straight from the synthetic renderer (no detection step),
for the privacy tests and benchmark: aligned greyscale crops like a faces.npy."""

from __future__ import annotations

import cv2
import numpy as np

from ferbench.data import synthetic

LABELS = ("neutral", *synthetic.EXPRESSIONS)


def synthetic_faces(identities: int, per_class: int, size: int = 48,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(faces (N, size, size) uint8, class index into LABELS, subject index) with
    `per_class` faces of every class per identity, on a mid-grey background."""
    rng = np.random.default_rng(seed)
    faces, labels, subjects = [], [], []
    for subject in range(identities):
        ident = synthetic.make_identity(subject, seed)
        for label, name in enumerate(LABELS):
            for _ in range(per_class):
                units = (synthetic.ActionUnits() if name == "neutral"
                         else synthetic.sequence_units(ident, name, rng))
                pose = synthetic.Pose(centre=(0, 0), scale=40, roll=0,
                                      yaw=rng.uniform(-0.3, 0.3), gaze=(0, 0),
                                      light=rng.uniform(-0.5, 0.5))
                image, alpha, _ = synthetic.render_face(ident, units, pose)
                grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)
                grey = grey * alpha + 128 * (1 - alpha)
                faces.append(cv2.resize(grey, (size, size), interpolation=cv2.INTER_AREA))
                labels.append(label)
                subjects.append(subject)
    return (np.clip(np.rint(faces), 0, 255).astype(np.uint8), np.array(labels),
            np.array(subjects))
