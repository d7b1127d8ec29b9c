"""A linear readout of a fixed feature map, fitted in closed form: what the HOG + SVM anchor
and the linear probe of a pretrained network share.

The features never change; one scikit-learn linear classifier per C of `c_grid` is fitted
on the training faces' features, and the one with the best accuracy on the fold's
validation split is kept, so model selection never sees a test face, as for every model.
A fit takes seconds, so C can also be scored by nested cross-validation (`subject_folds`):
on the validation split and on k subject-grouped folds of the training faces together.
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

#: What every readout's recipe holds besides its features' and classifier's own keys.
READOUT_DEFAULTS = {
    # 0: C is chosen on the validation split. k > 0: also on k folds of the training faces,
    # grouped by subject (one subject per fold when k is at least their count), each
    # predicted by a classifier fitted on the others; the training faces' augmented copies
    # are fitted with their subject and never scored.
    "subject_folds": 0,
    # Read by the workflow's bookkeeping only: one closed-form "epoch" per C tried.
    "epochs": 1,
    "patience": 1,
    "batch_size": 256,
}


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

    def _hyperplanes(self, c: float, features: np.ndarray, targets: np.ndarray, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
        """(K, F) weights and (K,) biases of the classifier fitted at `c`, on raw features:
        with `standardise`, the fitted faces' mean and spread are folded in,
        W . (f - mean) / scale + b = (W / scale) . f + b'."""
        mean, scale = np.zeros(features.shape[1]), np.ones(features.shape[1])
        if self.standardise:
            mean, scale = features.mean(0), features.std(0)
            scale[scale == 0] = 1.0  # a constant feature stays as it is (scikit-learn's rule)
        fitted = self._fit_one(c, (features - mean) / scale, targets, seed)
        weight, bias = one_row_per_class(fitted, self.linear.out_features,
                                         halve_pair=self.estimator == "logistic")
        weight = weight / scale
        return weight, bias - weight @ mean  # a class never trained keeps its -1e6 bias

    @staticmethod
    def _hits(weight: np.ndarray, bias: np.ndarray, views: list[np.ndarray],
              targets: np.ndarray) -> np.ndarray:
        """Per face, whether its vote over `views` (a face and its mirror) is right."""
        from ferbench.train import mean_probabilities  # train imports the model registry

        votes = mean_probabilities([torch.from_numpy(view @ weight.T + bias) for view in views])
        return votes.numpy().argmax(1) == targets

    def fit_closed_form(self, train_x: torch.Tensor, train_y: np.ndarray, val_x: torch.Tensor,
                        val_y: np.ndarray, seed: int, flip: bool = False,
                        held_out=()) -> pd.DataFrame:
        """Fit one classifier per C on the training faces, keep the one that predicts best
        the faces its fit never saw.

        Those are the validation split's faces and, with `held_out` ((fitted, scored)
        positions into the training faces, splits.subject_folds), each inner fold's scored
        faces, predicted by a classifier fitted on that fold's other subjects: one pooled
        accuracy over all of them picks C, so a few hundred faces choose instead of one
        validation subject's twenty. The kept classifier is the one fitted on every training
        face. `*_x` are [-1, 1] batches; with `flip` a scored face's class probabilities are
        averaged with its mirror's, as `train.predict` tests. Returns one history row per C,
        in grid order, with the chosen one marked (the first of equals: the strongest
        regularisation); the layer then holds the chosen classifier's hyperplanes.
        """
        def features(x: torch.Tensor) -> np.ndarray:
            with torch.no_grad():
                return self.features(x).double().numpy()

        def mirrors(x: torch.Tensor) -> list[np.ndarray]:
            return [features(x.flip(-1))] if flip else []

        train_f = features(train_x)
        val_views = [features(val_x), *mirrors(val_x)]
        inner = [(fitted, [train_f[scored], *mirrors(train_x[scored])], train_y[scored])
                 for fitted, scored in held_out]
        rows, best = [], None
        for i, c in enumerate(self.c_grid, start=1):
            weight, bias = self._hyperplanes(c, train_f, train_y, seed)
            val_hits = self._hits(weight, bias, val_views, val_y)
            inner_hits = [self._hits(*self._hyperplanes(c, train_f[fitted], train_y[fitted],
                                                        seed), scored_views, scored_y)
                          for fitted, scored_views, scored_y in inner]
            row = {"epoch": i, "C": c,
                   "train_acc": float(self._hits(weight, bias, [train_f], train_y).mean()),
                   "val_acc": float(val_hits.mean()) if len(val_y) else 0.0}
            pooled = np.concatenate([val_hits, *inner_hits])
            if inner:
                row["subject_folds_acc"] = float(np.concatenate(inner_hits).mean())
                row["pooled_acc"] = float(pooled.mean())
            rows.append(row)
            key = float(pooled.mean()) if len(pooled) else 0.0
            if best is None or key > best[0]:
                best = (key, row, weight, bias)
        _, row, weight, bias = best
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
