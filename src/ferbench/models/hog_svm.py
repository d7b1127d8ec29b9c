"""HOG + linear SVM: the classical anchor every deep model must beat on the same folds.

Features are Dalal & Triggs' (2005) histograms of oriented gradients on the face crop: 9
unsigned orientations and 2x2-cell blocks normalised by L2-Hys (their defaults, scikit-image's
`hog`), with 6x6-pixel cells instead of their 8x8: their cells tile a 64x128 pedestrian, and
a 64-px face at 8 px has only 8x8 cells for brows, eyes and mouth (JAFFE, leave-one-subject-
out: 63.0% with 6-px cells, 50.5% with 8-px ones). The classifier is a linear SVM (scikit-learn's LinearSVC:
squared hinge, one-vs-rest) whose C is the value of `c_grid` with the best accuracy on the
fold's validation split, or with `subject_folds` on that split and on subject-grouped folds
of the training faces (readout.LinearReadout, which the linear probe of the FER2013
mini-Xception shares). The scores are SVM margins, not probabilities; their softmax orders
the classes the same way.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.feature import hog

from ferbench.models.readout import READOUT_DEFAULTS, LinearReadout

DEFAULTS = {
    "input_size": 64,
    "orientations": 9,
    "cell": 6,
    "block": 2,
    # C candidates, chosen on the validation split (a log grid over the usual range).
    "c_grid": [0.001, 0.01, 0.1, 1.0, 10.0],
    "max_iter": 5000,
    **READOUT_DEFAULTS,
}


class HOGSVM(LinearReadout):
    """HOG features of the face channel, then one linear SVM score per class."""

    def __init__(self, num_classes: int, input_size: int = 64, orientations: int = 9,
                 cell: int = 6, block: int = 2, c_grid=(0.001, 0.01, 0.1, 1.0, 10.0),
                 max_iter: int = 5000):
        if input_size < cell * block:
            raise ValueError(f"hog_svm needs input_size >= cell x block = {cell * block}, "
                             f"got {input_size}")
        options = {"orientations": orientations, "pixels_per_cell": (cell, cell),
                   "cells_per_block": (block, block), "block_norm": "L2-Hys"}
        features = len(hog(np.zeros((input_size, input_size)), **options))
        super().__init__(num_classes, features, c_grid, max_iter)
        self.options = options

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F) HOG vectors of the face channel of a [-1, 1] batch (float64, on the CPU)."""
        faces = ((x[:, 0].detach().float().cpu().numpy() + 1.0) * 127.5).round()
        return torch.from_numpy(np.stack([hog(face, **self.options) for face in faces])
                                if len(faces) else np.zeros((0, self.linear.in_features)))

    traceable = False  # the HOG is scikit-image's, in numpy

    def attention_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Where the chosen hyperplane of each face's top class weighs the gradients: the
        per-cell sum of |w| over that class's HOG weights, upsampled to cells' pixels."""
        top = self(x).argmax(1)
        rows, cols = (x.shape[-1] // s for s in self.options["pixels_per_cell"])
        block = self.options["cells_per_block"][0]
        per_block = self.linear.weight[top].abs().reshape(
            len(x), rows - block + 1, cols - block + 1, block, block, -1).sum((-1,))
        cells = torch.zeros(len(x), rows, cols, device=x.device)
        for i in range(block):  # each block adds its weight to the cells it covers
            for j in range(block):
                cells[:, i:i + rows - block + 1, j:j + cols - block + 1] += per_block[..., i, j]
        return {"svm_weight": cells.detach()}

    def representations(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"hog": self.features(x)}

