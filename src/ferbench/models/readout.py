"""A linear readout of a fixed feature map, fitted in closed form: what the HOG + SVM anchor
and the linear probe of a pretrained network share.

The features never change; one scikit-learn linear classifier per C of `c_grid` is fitted
on the training faces' features, and the one with the best accuracy on the fold's
validation split is kept, so model selection never sees a test face, as for every model.
Its hyperplanes become a Linear layer (features standardised with the training split's
mean and spread are folded into it), so evaluation, explain, `ferbench live` and MLflow
treat the readout like any other model: scores = W . features(face) + b.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from ferbench.models.base import FERModel


class LinearReadout(FERModel):
    """`features` (a subclass's) of the face, then one linear score per class."""

    #: Trained in closed form by `fit_closed_form`, never by gradient steps.
    closed_form = True
    #: "svm": LinearSVC (squared hinge, one-vs-rest); "logistic": LogisticRegression
    #: (multinomial cross-entropy, L2). C is the inverse regularisation strength of both.
    estimator = "svm"
    #: Standardise each feature on the training split before fitting (features whose scales
    #: differ, a network's activations); the scaling is folded into the Linear layer.
    standardise = False

    def __init__(self, num_classes: int, feature_count: int, c_grid, max_iter: int):
        super().__init__()
        self.c_grid, self.max_iter = [float(c) for c in c_grid], max_iter
        self.linear = nn.Linear(feature_count, num_classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F) features of a [-1, 1] batch."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x).to(self.linear.weight))

    def objective(self, x: torch.Tensor, targets: torch.Tensor):
        """The estimator's loss of the current hyperplanes (reported, never descended)."""
        logits = self(x)
        loss = (nn.functional.multi_margin_loss if self.estimator == "svm"
                else nn.functional.cross_entropy)
        return loss(logits, targets), logits

    def _fit_one(self, c: float, features: np.ndarray, targets: np.ndarray, seed: int):
        if self.estimator == "svm":
            from sklearn.svm import LinearSVC

            return LinearSVC(C=c, random_state=seed, max_iter=self.max_iter).fit(features,
                                                                                 targets)
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=c, max_iter=self.max_iter).fit(features, targets)

    def fit_closed_form(self, train_x: torch.Tensor, train_y: np.ndarray, val_x: torch.Tensor,
                        val_y: np.ndarray, seed: int, flip: bool = False) -> pd.DataFrame:
        """Fit one classifier per C on the training faces, keep the best on validation.

        `*_x` are [-1, 1] batches; with `flip` a validation face's class probabilities are
        averaged with its mirror's, as `train.predict` tests. Returns one history row per C,
        in grid order, with the chosen one marked; the layer then holds the chosen
        classifier's hyperplanes.
        """
        from ferbench.train import mean_probabilities  # train imports the model registry

        with torch.no_grad():
            train_f = self.features(train_x).double().numpy()
            val_views = [self.features(view).double().numpy()
                         for view in ((val_x, val_x.flip(-1)) if flip else (val_x,))]
        mean, scale = np.zeros(train_f.shape[1]), np.ones(train_f.shape[1])
        if self.standardise:
            mean, scale = train_f.mean(0), train_f.std(0)
            scale[scale == 0] = 1.0  # a constant feature stays as it is (scikit-learn's rule)
        train_f = (train_f - mean) / scale
        val_views = [(view - mean) / scale for view in val_views]
        rows, best = [], None
        for i, c in enumerate(self.c_grid, start=1):
            fitted = self._fit_one(c, train_f, train_y, seed)
            weight, bias = one_row_per_class(fitted, self.linear.out_features,
                                             halve_pair=self.estimator == "logistic")
            votes = mean_probabilities([torch.from_numpy(view @ weight.T + bias)
                                        for view in val_views]).numpy()
            row = {"epoch": i, "C": c, "train_acc": fitted.score(train_f, train_y),
                   "val_acc": float((votes.argmax(1) == val_y).mean()) if len(val_y) else 0.0}
            rows.append(row)
            if best is None or row["val_acc"] > best[0]["val_acc"]:
                best = (row, weight, bias)
        row, weight, bias = best
        weight = weight / scale  # W . (f - mean) / scale + b = (W / scale) . f + b'
        bias = bias - weight @ mean  # zero for a class never trained: its bias stays
        with torch.no_grad():
            self.linear.weight.copy_(torch.from_numpy(weight.astype(np.float32)))
            self.linear.bias.copy_(torch.from_numpy(bias.astype(np.float32)))
        history = pd.DataFrame(rows)
        history["chosen"] = history["epoch"] == row["epoch"]
        return history

def one_row_per_class(fitted, num_classes: int, halve_pair: bool = False
                      ) -> tuple[np.ndarray, np.ndarray]:
    """A linear classifier's hyperplanes as (K, F) and (K,): scikit-learn keeps one row for a
    two-class problem (the positive class's) and only the classes the training split holds.
    `halve_pair` splits a two-class logistic score z into (-z/2, z/2), whose softmax is the
    logistic's own probability."""
    coef, intercept = fitted.coef_, fitted.intercept_
    if len(fitted.classes_) == 2:
        half = 0.5 if halve_pair else 1.0
        coef, intercept = (np.concatenate([-coef, coef]) * half,
                           np.concatenate([-intercept, intercept]) * half)
    weight = np.full((num_classes, coef.shape[1]), 0.0)
    bias = np.full(num_classes, -1e6)  # a class never trained is never predicted
    weight[fitted.classes_], bias[fitted.classes_] = coef, intercept
    return weight, bias
