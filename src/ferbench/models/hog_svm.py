"""HOG + linear SVM: the classical anchor every deep model must beat on the same folds.

Features are Dalal & Triggs' (2005) histograms of oriented gradients on the face crop: 9
unsigned orientations and 2x2-cell blocks normalised by L2-Hys (their defaults, scikit-image's
`hog`), with 6x6-pixel cells instead of their 8x8: their cells tile a 64x128 pedestrian, and
a 64-px face at 8 px has only 8x8 cells for brows, eyes and mouth (JAFFE, leave-one-subject-
out: 63.0% with 6-px cells, 50.5% with 8-px ones). The classifier is a linear SVM (scikit-learn's LinearSVC:
squared hinge, one-vs-rest) whose C is the value of `c_grid` with the best accuracy on the
fold's validation split; model selection never sees a test face, as for every model.

The fitted hyperplanes become a Linear layer, so evaluation, explain, `ferbench live` and
MLflow treat the baseline like any other model: scores = W . HOG(face) + b. The scores are
SVM margins, not probabilities; their softmax orders the classes the same way.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from skimage.feature import hog
from torch import nn

from ferbench.models.base import FERModel

DEFAULTS = {
    "input_size": 64,
    "orientations": 9,
    "cell": 6,
    "block": 2,
    # C candidates, chosen on the validation split (a log grid over the usual range).
    "c_grid": [0.001, 0.01, 0.1, 1.0, 10.0],
    "max_iter": 5000,
    # Read by the workflow's bookkeeping only: one closed-form "epoch" per C tried.
    "epochs": 1,
    "patience": 1,
    "batch_size": 256,
}


class HOGSVM(FERModel):
    """HOG features of the face channel, then one linear score per class."""

    #: Trained in closed form by `fit_closed_form`, never by gradient steps.
    closed_form = True

    def __init__(self, num_classes: int, input_size: int = 64, orientations: int = 9,
                 cell: int = 6, block: int = 2, c_grid=(0.001, 0.01, 0.1, 1.0, 10.0),
                 max_iter: int = 5000):
        super().__init__()
        self.c_grid, self.max_iter = [float(c) for c in c_grid], max_iter
        if input_size < cell * block:
            raise ValueError(f"hog_svm needs input_size >= cell x block = {cell * block}, "
                             f"got {input_size}")
        self.options = {"orientations": orientations, "pixels_per_cell": (cell, cell),
                        "cells_per_block": (block, block), "block_norm": "L2-Hys"}
        features = len(hog(np.zeros((input_size, input_size)), **self.options))
        self.linear = nn.Linear(features, num_classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def features(self, x: torch.Tensor) -> np.ndarray:
        """(B, F) HOG vectors of the face channel of a [-1, 1] batch."""
        faces = ((x[:, 0].detach().float().cpu().numpy() + 1.0) * 127.5).round()
        return np.stack([hog(face, **self.options) for face in faces]) if len(faces) else \
            np.zeros((0, self.linear.in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = torch.from_numpy(self.features(x)).to(self.linear.weight)
        return self.linear(feats)

    def objective(self, x: torch.Tensor, targets: torch.Tensor):
        """Multi-class hinge loss of the current hyperplanes (reported, never descended)."""
        logits = self(x)
        return nn.functional.multi_margin_loss(logits, targets), logits

    def fit_closed_form(self, train_x: torch.Tensor, train_y: np.ndarray, val_x: torch.Tensor,
                        val_y: np.ndarray, seed: int) -> pd.DataFrame:
        """Fit one SVM per C on the training faces, keep the best on validation.

        `*_x` are [-1, 1] batches. Returns one history row per C, in grid order, with the
        chosen one marked; the layer then holds the chosen SVM's hyperplanes.
        """
        from sklearn.svm import LinearSVC

        train_f, val_f = self.features(train_x), self.features(val_x)
        rows, best = [], None
        for i, c in enumerate(self.c_grid, start=1):
            svm = LinearSVC(C=c, random_state=seed, max_iter=self.max_iter).fit(train_f, train_y)
            row = {"epoch": i, "C": c, "train_acc": svm.score(train_f, train_y),
                   "val_acc": svm.score(val_f, val_y) if len(val_y) else 0.0}
            rows.append(row)
            if best is None or row["val_acc"] > best[0]["val_acc"]:
                best = (row, svm)
        row, svm = best
        weight, bias = _one_row_per_class(svm, self.linear.out_features)
        with torch.no_grad():
            self.linear.weight.copy_(torch.from_numpy(weight))
            self.linear.bias.copy_(torch.from_numpy(bias))
        history = pd.DataFrame(rows)
        history["chosen"] = history["epoch"] == row["epoch"]
        return history

    face_like_maps = ()

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
        return {"hog": torch.from_numpy(self.features(x))}


def _one_row_per_class(svm, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The SVM's hyperplanes as (K, F) and (K,): scikit-learn keeps one row for a two-class
    problem (the positive class's) and only the classes the training split holds."""
    coef, intercept = svm.coef_.astype(np.float32), svm.intercept_.astype(np.float32)
    if len(svm.classes_) == 2:
        coef, intercept = np.concatenate([-coef, coef]), np.concatenate([-intercept, intercept])
    weight = np.full((num_classes, coef.shape[1]), 0.0, np.float32)
    bias = np.full(num_classes, -1e6, np.float32)  # a class never trained is never predicted
    weight[svm.classes_], bias[svm.classes_] = coef, intercept
    return weight, bias
