"""Per-fold metrics and their aggregation over folds."""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Counts, true class by row and predicted class by column, from one bincount (the
    bootstrap of ferbench.compare calls it thousands of times)."""
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    return np.bincount(y_true * n_classes + y_pred,
                       minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is (scikit-learn's zero_division=0)."""
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)),
                     where=denominator > 0)


def class_scores(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 and support of a confusion matrix."""
    hits, support, predicted = np.diag(confusion), confusion.sum(1), confusion.sum(0)
    return {"precision": _ratio(hits, predicted), "recall": _ratio(hits, support),
            "f1": _ratio(2 * hits, support + predicted), "support": support}


def macro_f1(confusion: np.ndarray) -> float:
    """Mean F1 over the classes present in the truth (a class nobody shows has no F1)."""
    return _mean_present_f1(class_scores(confusion))


def _mean_present_f1(scores: dict[str, np.ndarray]) -> float:
    present = scores["support"] > 0
    return float(scores["f1"][present].mean()) if present.any() else 0.0


def classification_metrics(y_true, y_pred, labels) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix (counts).

    Computed from the confusion matrix in numpy, not scikit-learn: importing sklearn.metrics
    costs 1.4 s of every evaluation job."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    confusion = confusion_matrix(y_true, y_pred, len(labels))
    scores = class_scores(confusion)
    return {
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        "macro_f1": _mean_present_f1(scores),
        "labels": list(labels),
        "confusion": confusion.tolist(),
        "per_class": {
            label: {"precision": float(scores["precision"][i]),
                    "recall": float(scores["recall"][i]), "f1": float(scores["f1"][i]),
                    "support": int(scores["support"][i])}
            for i, label in enumerate(labels)
        },
    }


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1, as papers report over folds)."""
    values = np.asarray(values, dtype=float)
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return float(values.mean()), std
