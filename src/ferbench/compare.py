"""Statistics for comparing models on the same folds, pure functions over numbers and arrays.

FER papers compare single numbers; a reviewer asks whether A is really better than B. The
machine-learning literature's answers, all from the folds and test predictions ferbench
already has:

- k-fold scores are not independent (the training sets overlap), so the plain t-test is too
  confident. Nadeau & Bengio (2003) correct the variance of the mean of k resampled scores by
  (1/k + n_test/n_train) instead of 1/k: the corrected resampled t-test and its interval.
- Wilcoxon's signed-rank test on the per-fold differences assumes no normality (Demsar 2006,
  section 3.1.3); McNemar's test compares two models face by face on pooled test predictions.
- Across several data sets: Friedman's test on the models' ranks and the Nemenyi critical
  difference (Demsar 2006, section 3.2.2, eq. for chi2_F, F_F and CD).
- A protocol with one fold (FER2013's predefined split) has no spread over folds: its
  intervals come from a percentile bootstrap over the test faces.
- Calibration: the expected calibration error over equal-width confidence bins (Guo et al.
  2017, eq. 3) and the bins themselves, for a reliability diagram.

The distributions come from scipy and statsmodels; only the statistics are computed here.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from ferbench import evaluate

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
CALIBRATION_BINS = 15


def corrected_t_interval(values, test_train_ratio: float,
                         confidence: float = CONFIDENCE) -> dict:
    """Mean of k resampled scores (or paired differences) with the corrected resampled t
    interval and the two-sided p-value of "mean = 0" (Nadeau & Bengio 2003): variance of the
    mean = (1/k + n_test/n_train) * s^2, t with k - 1 degrees of freedom. With a ratio of 0
    it is the ordinary one-sample t-test."""
    values = np.asarray(values, dtype=float)
    k = len(values)
    mean = float(values.mean())
    if k < 2:
        return {"mean": mean, "low": None, "high": None, "p": None}
    standard_error = float(np.sqrt(values.var(ddof=1) * (1 / k + test_train_ratio)))
    margin = float(stats.t.ppf(0.5 + confidence / 2, k - 1)) * standard_error
    if standard_error > 0:
        p = float(2 * stats.t.sf(abs(mean) / standard_error, k - 1))
    else:  # every fold agrees exactly: no doubt either way
        p = 1.0 if mean == 0 else 0.0
    return {"mean": mean, "low": mean - margin, "high": mean + margin, "p": p}


def unpaired_difference(a, ratio_a: float, b, ratio_b: float,
                        confidence: float = CONFIDENCE) -> dict:
    """Mean of scores `a` minus mean of `b` from two separate k-fold runs (the honest and the
    leaky protocol: different folds, so no pairing), each mean's variance corrected as in
    corrected_t_interval, with Welch-Satterthwaite degrees of freedom. With both ratios 0 it
    is Welch's t-test."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    mean = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return {"mean": mean, "low": None, "high": None, "p": None}
    va = a.var(ddof=1) * (1 / len(a) + ratio_a)
    vb = b.var(ddof=1) * (1 / len(b) + ratio_b)
    standard_error = float(np.sqrt(va + vb))
    if standard_error == 0:
        return {"mean": mean, "low": mean, "high": mean, "p": 1.0 if mean == 0 else 0.0}
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    margin = float(stats.t.ppf(0.5 + confidence / 2, df)) * standard_error
    return {"mean": mean, "low": mean - margin, "high": mean + margin,
            "p": float(2 * stats.t.sf(abs(mean) / standard_error, df))}


def wilcoxon_p(differences) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (exact for few folds);
    1.0 when every difference is zero, None with fewer than two."""
    differences = np.asarray(differences, dtype=float)
    if len(differences) < 2:
        return None
    if not differences.any():
        return 1.0
    return float(stats.wilcoxon(differences).pvalue)


def mcnemar(correct_a, correct_b) -> dict:
    """McNemar's exact test on two models' per-face correctness (same faces, same order):
    only the faces exactly one model gets right count (binomial, statsmodels)."""
    from statsmodels.stats.contingency_tables import mcnemar as mcnemar_test

    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"McNemar needs the same faces for both models: {a.shape} vs {b.shape}")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    table = [[int((a & b).sum()), a_only], [b_only, int((~a & ~b).sum())]]
    p = float(mcnemar_test(table, exact=True).pvalue) if a_only + b_only else 1.0
    return {"faces": int(a.size), "a_only": a_only, "b_only": b_only, "p": p}


def bootstrap_interval(statistic, n: int, seed: int, confidence: float = CONFIDENCE,
                       resamples: int = BOOTSTRAP_RESAMPLES) -> dict:
    """Percentile bootstrap over n test faces (scipy.stats.bootstrap): `statistic(indices)`
    is the score of the faces at `indices`; its value on all faces is the mean."""
    indices = np.arange(n)
    mean = float(statistic(indices))
    if n < 2:
        return {"mean": mean, "low": None, "high": None, "p": None}
    result = stats.bootstrap((indices,), statistic, n_resamples=resamples, vectorized=False,
                             method="percentile", confidence_level=confidence,
                             rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return {"mean": mean, "low": float(low), "high": float(high), "p": None}


def scores_on(y_true, y_pred, n_classes: int):
    """The two scores of a set of faces as functions of face indices (for the bootstrap)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return {"accuracy": lambda i: float((y_true[i] == y_pred[i]).mean()),
            "macro_f1": lambda i: evaluate.macro_f1(
                evaluate.confusion_matrix(y_true[i], y_pred[i], n_classes))}


def friedman(avg_ranks, n_datasets: int) -> dict:
    """Friedman's test from the models' average ranks over N data sets (Demsar 2006,
    section 3.2.2): chi2_F = 12N / (k(k+1)) * (sum R_j^2 - k(k+1)^2 / 4) with k - 1 degrees of
    freedom, and Iman & Davenport's less conservative F_F = (N-1) chi2_F / (N(k-1) - chi2_F)
    with (k-1, (k-1)(N-1)) degrees of freedom."""
    ranks = np.asarray(avg_ranks, dtype=float)
    k, n = len(ranks), n_datasets
    chi2 = float(12 * n / (k * (k + 1)) * (np.sum(ranks ** 2) - k * (k + 1) ** 2 / 4))
    denominator = n * (k - 1) - chi2
    f = float((n - 1) * chi2 / denominator) if denominator > 0 else float("inf")
    return {"chi2": chi2, "chi2_p": float(stats.chi2.sf(chi2, k - 1)), "f": f,
            "f_p": float(stats.f.sf(f, k - 1, (k - 1) * (n - 1))) if n > 1 else None}


def average_ranks(scores) -> np.ndarray:
    """Average rank of each model (columns) over data sets (rows); rank 1 is the highest
    score, ties share the mean rank (Demsar 2006, section 3.2.2)."""
    scores = np.asarray(scores, dtype=float)
    return np.mean([stats.rankdata(-row) for row in scores], axis=0)


def nemenyi_cd(k: int, n_datasets: int, alpha: float = 0.05) -> float:
    """Nemenyi's critical difference of average ranks: q_alpha sqrt(k(k+1) / 6N), q_alpha the
    studentized range quantile over sqrt(2) (Demsar 2006, Table 5a)."""
    q = stats.studentized_range.ppf(1 - alpha, k, np.inf) / np.sqrt(2)
    return float(q * np.sqrt(k * (k + 1) / (6 * n_datasets)))


def rank_models(scores, models: list[str], alpha: float = 0.05) -> dict:
    """Friedman test and Nemenyi critical difference of models (columns of `scores`) over
    data sets (rows), with the groups whose ranks differ by less than the CD."""
    scores = np.asarray(scores, dtype=float)
    n, k = scores.shape
    ranks = average_ranks(scores)
    cd = nemenyi_cd(k, n, alpha)
    return {"models": list(models), "datasets": n, "average_ranks": ranks.tolist(),
            **friedman(ranks, n), "cd": cd, "alpha": alpha,
            "cliques": cliques(ranks, cd)}


def cliques(ranks, cd: float) -> list[list[int]]:
    """Maximal runs of models (indices, best rank first) whose ranks lie within one CD: the
    bars of a critical difference diagram."""
    order = np.argsort(ranks, kind="stable")
    runs = []
    for start in range(len(order)):
        end = start
        while end + 1 < len(order) and ranks[order[end + 1]] - ranks[order[start]] < cd:
            end += 1
        if end > start and not any(run[-1] >= end for run in runs):
            runs.append(list(range(start, end + 1)))
    return [[int(order[i]) for i in run] for run in runs]


def calibration(confidences, correct, bins: int = CALIBRATION_BINS) -> dict:
    """Expected calibration error of top-class confidences: sum over equal-width bins
    (lo, hi] of |B|/n * |accuracy(B) - mean confidence(B)| (Guo et al. 2017, eq. 3), and the
    non-empty bins for a reliability diagram."""
    confidences = np.asarray(confidences, dtype=float)
    correct = np.asarray(correct, dtype=float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.searchsorted(edges, confidences, side="left") - 1, 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        if not inside.any():
            continue
        accuracy, confidence = float(correct[inside].mean()), float(confidences[inside].mean())
        ece += inside.sum() / len(confidences) * abs(accuracy - confidence)
        table.append({"low": float(edges[b]), "high": float(edges[b + 1]),
                      "count": int(inside.sum()), "accuracy": accuracy,
                      "confidence": confidence})
    return {"ece": float(ece), "bins": table, "faces": int(len(confidences))}


def wilson_interval(correct: int, faces: int, confidence: float = CONFIDENCE) -> dict:
    """Accuracy of one fold's test faces with Wilson's score interval (statsmodels): a
    binomial proportion, good also near 0 and 1 and for few faces."""
    from statsmodels.stats.proportion import proportion_confint

    if faces == 0:
        return {"mean": None, "low": None, "high": None, "p": None}
    low, high = proportion_confint(correct, faces, alpha=1 - confidence, method="wilson")
    return {"mean": correct / faces, "low": float(low), "high": float(high), "p": None}


def inside(value: float, interval: dict) -> bool | None:
    """Whether a value lies in an interval (None where the interval is unknown)."""
    if interval.get("low") is None:
        return None
    return interval["low"] <= value <= interval["high"]


# -- one (dataset, protocol): every model, every pair -------------------------------------------

def test_train_ratio(folds) -> float:
    """n_test / n_train of a split table (pandas, one row per face and fold), means over folds:
    the faces a model is fitted on (role train, before augmentation: copies of one face add
    no new sample) against the faces it is tested on."""
    counts = folds.groupby(["fold", "role"]).size().unstack(fill_value=0)
    return float(counts["test"].mean() / counts["train"].mean())


def model_statistics(fold_scores: list[dict], predictions, labels: list[str], ratio: float,
                     seed: int) -> dict:
    """Accuracy and macro-F1 with their 95% intervals (over folds with the corrected t; over
    test faces by bootstrap for a single fold) and calibration, for one model.
    `predictions` holds every fold's test faces: label, predicted and p_<label> columns."""
    out = {"folds": len(fold_scores), "test_faces": int(len(predictions)),
           "test_train_ratio": ratio}
    if len(fold_scores) > 1:
        out["interval"] = "corrected resampled t over folds (Nadeau & Bengio 2003)"
        for key in ("accuracy", "macro_f1"):
            out[key] = within_unit(corrected_t_interval([f[key] for f in fold_scores], ratio))
    else:
        out["interval"] = "percentile bootstrap over test faces"
        y_true, y_pred = encoded(predictions, labels)
        for key, score in scores_on(y_true, y_pred, len(labels)).items():
            out[key] = bootstrap_interval(score, len(y_true), seed)
    right = predictions["label"] == predictions["predicted"]
    out["per_fold"] = [{"fold": f["fold"], **wilson_interval(
        int(right[predictions["fold"] == f["fold"]].sum()),
        int((predictions["fold"] == f["fold"]).sum()))} for f in fold_scores]
    probabilities = predictions[[f"p_{label}" for label in labels]].to_numpy(float)
    out["calibration"] = calibration(probabilities.max(1) if len(probabilities) else [], right)
    return out


def within_unit(interval: dict) -> dict:
    """A score's symmetric t interval cut to [0, 1], where scores live (5 widely spread folds
    can reach past 100%)."""
    if interval["low"] is None:
        return interval
    return {**interval, "low": max(0.0, interval["low"]), "high": min(1.0, interval["high"])}


def encoded(predictions, labels: list[str], suffix: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(true, predicted) class indices of a predictions table (columns label/predicted, with
    `suffix` after a merge)."""
    index = {label: i for i, label in enumerate(labels)}
    return (predictions["label" + suffix].map(index).to_numpy(int),
            predictions["predicted" + suffix].map(index).to_numpy(int))


@dataclass(frozen=True)
class Results:
    """One model's results on a (dataset, protocol): per-fold scores (fold, accuracy,
    macro_f1) and every fold's test predictions (fold, uid, label, predicted, p_<label>)."""

    model: str
    scores: list[dict]
    predictions: pd.DataFrame


def pair_statistics(a: Results, b: Results, labels: list[str], ratio: float, seed: int) -> dict:
    """A minus B on the same folds: mean difference of accuracy and macro-F1 with its
    interval and p-value (corrected t over folds, or a paired bootstrap over faces for one
    fold), Wilcoxon's p over folds, and McNemar's test on the pooled test faces."""
    if [f["fold"] for f in a.scores] != [f["fold"] for f in b.scores]:
        raise ValueError(f"{a.model} and {b.model} were not run on the same folds")
    merged = a.predictions.merge(b.predictions, on=["fold", "uid"], suffixes=("_a", "_b"))
    if not len(merged) == len(a.predictions) == len(b.predictions):
        raise ValueError(f"{a.model} and {b.model} were not tested on the same faces")
    correct = {side: merged[f"label_{side}"] == merged[f"predicted_{side}"] for side in "ab"}
    out = {"a": a.model, "b": b.model, "folds": len(a.scores),
           "mcnemar": mcnemar(correct["a"], correct["b"])}
    if len(a.scores) > 1:
        for key in ("accuracy", "macro_f1"):
            differences = [x[key] - y[key] for x, y in zip(a.scores, b.scores)]
            out[key] = {**corrected_t_interval(differences, ratio),
                        "wilcoxon_p": wilcoxon_p(differences)}
    else:
        score_a = scores_on(*encoded(merged, labels, "_a"), len(labels))
        score_b = scores_on(*encoded(merged, labels, "_b"), len(labels))
        for key in ("accuracy", "macro_f1"):
            out[key] = {**bootstrap_interval(lambda i, key=key: score_a[key](i) - score_b[key](i),
                                             len(merged), seed), "wilcoxon_p": None}
    return out


def study_statistics(results: list[Results], labels: list[str], folds, seed: int) -> dict:
    """Every model's intervals and calibration, and every pair's comparison, of one
    (dataset, protocol); `folds` is its split table."""
    ratio = test_train_ratio(folds)
    return {"confidence": CONFIDENCE, "test_train_ratio": ratio, "labels": list(labels),
            "models": {r.model: model_statistics(r.scores, r.predictions, labels, ratio, seed)
                       for r in results},
            "pairs": [pair_statistics(a, b, labels, ratio, seed)
                      for a, b in itertools.combinations(results, 2)]}
