"""The comparison statistics, each checked on a small fixed table against values worked out
by hand or by a reference implementation (scipy, statsmodels, Demsar 2006's own example)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ferbench import compare, evaluate

#: Paired per-fold accuracy differences of two models over five folds.
DIFFERENCES = [0.02, 0.04, 0.01, 0.03, 0.05]


def test_corrected_t_interval_by_hand():
    # mean 0.03; s^2 = (1 + 1 + 4 + 0 + 4) e-4 / 4 = 2.5e-4; corrected variance of the mean
    # s^2 (1/5 + 1/4) = 1.125e-4; t_{0.975, 4} = 2.7764451
    result = compare.corrected_t_interval(DIFFERENCES, test_train_ratio=0.25)
    standard_error = math.sqrt(1.125e-4)
    assert result["mean"] == pytest.approx(0.03)
    assert result["low"] == pytest.approx(0.03 - 2.7764451 * standard_error, abs=1e-7)
    assert result["high"] == pytest.approx(0.03 + 2.7764451 * standard_error, abs=1e-7)
    # t = 0.03 / 0.0106066 = 2.8284271 (= 2 sqrt 2); two-sided p from Student's t, 4 df
    assert result["p"] == pytest.approx(2 * stats.t.sf(2 * math.sqrt(2), 4), rel=1e-9)
    assert 0.04 < result["p"] < 0.05


def test_corrected_t_without_overlap_is_scipys_one_sample_t_test():
    plain = stats.ttest_1samp(DIFFERENCES, 0.0)
    result = compare.corrected_t_interval(DIFFERENCES, test_train_ratio=0.0)
    assert result["p"] == pytest.approx(plain.pvalue, rel=1e-9)
    low, high = plain.confidence_interval(0.95)
    assert (result["low"], result["high"]) == pytest.approx((low, high), rel=1e-9)


def test_correction_widens_the_interval_as_training_sets_overlap_more():
    widths = [compare.corrected_t_interval(DIFFERENCES, ratio) for ratio in (0.0, 0.25, 1.0)]
    spans = [w["high"] - w["low"] for w in widths]
    assert spans[0] < spans[1] < spans[2]


def test_constant_scores_and_single_folds_have_no_spread_to_test():
    assert compare.corrected_t_interval([0.0, 0.0, 0.0], 0.25)["p"] == 1.0
    assert compare.corrected_t_interval([0.8], 0.25) == {"mean": 0.8, "low": None,
                                                         "high": None, "p": None}


def test_wilcoxon_p_by_hand_and_by_scipy():
    # five differences of one sign: the exact two-sided p is 2 / 2^5
    assert compare.wilcoxon_p(DIFFERENCES) == pytest.approx(2 / 32)
    mixed = [0.02, -0.01, 0.03, 0.04, -0.05, 0.06]
    assert compare.wilcoxon_p(mixed) == pytest.approx(stats.wilcoxon(mixed).pvalue)
    assert compare.wilcoxon_p([0.0, 0.0, 0.0]) == 1.0
    assert compare.wilcoxon_p([0.1]) is None


def test_mcnemar_counts_discordant_faces_and_takes_the_exact_binomial_p():
    # 10 faces: both right on 3, only A on 1, only B on 5, both wrong on 1
    a = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], bool)
    b = np.array([1, 1, 1, 0, 1, 1, 1, 1, 1, 0], bool)
    result = compare.mcnemar(a, b)
    assert (result["faces"], result["a_only"], result["b_only"]) == (10, 1, 5)
    # two-sided exact: 2 * P(X <= 1), X ~ Binomial(6, 1/2) = 2 * (1 + 6) / 64
    assert result["p"] == pytest.approx(14 / 64)
    assert compare.mcnemar(a, a)["p"] == 1.0
    with pytest.raises(ValueError, match="same faces"):
        compare.mcnemar(a, b[:5])


def test_classification_metrics_match_scikit_learns():
    """Numpy's confusion-matrix arithmetic gives scikit-learn's figures, zero_division=0,
    with a class absent from the truth but predicted (5) and one never predicted (4)."""
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 5, 300)
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, 6, 300))
    y_pred[y_pred == 4] = 3
    labels, index = list("abcdef"), list(range(6))
    metrics = evaluate.classification_metrics(y_true, y_pred, labels)
    assert metrics["confusion"] == confusion_matrix(y_true, y_pred, labels=index).tolist()
    reference = precision_recall_fscore_support(y_true, y_pred, labels=index, zero_division=0)
    for name, expected in zip(("precision", "recall", "f1", "support"), reference):
        got = [metrics["per_class"][label][name] for label in labels]
        np.testing.assert_allclose(got, expected, atol=1e-12)
    # Macro-F1 over the classes the truth has (0-4), as the papers average.
    assert metrics["macro_f1"] == pytest.approx(
        f1_score(y_true, y_pred, labels=index[:5], average="macro", zero_division=0), abs=1e-12)
    assert metrics["accuracy"] == pytest.approx((y_true == y_pred).mean())


def test_bootstrap_interval_is_seeded_and_agrees_with_the_normal_approximation():
    correct = np.r_[np.ones(300), np.zeros(100)]  # accuracy 0.75 over 400 faces
    score = lambda i: correct[i].mean()  # noqa: E731
    first = compare.bootstrap_interval(score, len(correct), seed=0)
    assert first == compare.bootstrap_interval(score, len(correct), seed=0)
    wald = 1.96 * math.sqrt(0.75 * 0.25 / 400)  # 0.0424
    assert first["mean"] == 0.75
    assert first["low"] == pytest.approx(0.75 - wald, abs=0.008)
    assert first["high"] == pytest.approx(0.75 + wald, abs=0.008)


def test_friedman_and_nemenyi_reproduce_demsars_worked_example():
    # Demsar (2006), section 3.2.2: four C4.5 variants on 14 data sets, average ranks
    # 3.143, 2.000, 2.893, 1.964 give chi2_F = 9.28, F_F = 3.69, and CD = 1.25 at 0.05
    result = compare.friedman([3.143, 2.000, 2.893, 1.964], n_datasets=14)
    assert result["chi2"] == pytest.approx(9.28, abs=0.01)
    assert result["f"] == pytest.approx(3.69, abs=0.01)
    assert result["f_p"] < 0.05
    assert compare.nemenyi_cd(4, 14) == pytest.approx(1.25, abs=0.005)
    # Table 5a's q_0.05 for k = 2, 3, 5: 1.960, 2.343, 2.728
    for k, q in ((2, 1.960), (3, 2.343), (5, 2.728)):
        assert compare.nemenyi_cd(k, 6) == pytest.approx(q * math.sqrt(k * (k + 1) / 36),
                                                         abs=0.001)


def test_friedman_from_ranks_matches_scipy_on_a_table_without_ties():
    scores = np.array([[0.81, 0.77, 0.70], [0.66, 0.69, 0.60], [0.91, 0.85, 0.88],
                       [0.72, 0.64, 0.63], [0.58, 0.55, 0.50]])
    ranks = compare.average_ranks(scores)
    assert ranks.tolist() == pytest.approx([1.2, 2.0, 2.8])
    ours = compare.friedman(ranks, len(scores))
    reference = stats.friedmanchisquare(*scores.T)
    assert ours["chi2"] == pytest.approx(reference.statistic)
    assert ours["chi2_p"] == pytest.approx(reference.pvalue)


def test_rank_models_groups_models_within_one_critical_difference():
    scores = np.array([[0.9, 0.8, 0.5], [0.91, 0.82, 0.6], [0.85, 0.86, 0.4],
                       [0.9, 0.7, 0.6]])
    result = compare.rank_models(scores, ["a", "b", "c"])
    assert result["average_ranks"] == pytest.approx([1.25, 1.75, 3.0])
    # CD for k = 3, N = 4: 2.343 sqrt(12 / 24) = 1.657: a-b and b-c join, a-c (1.75) does not
    assert result["cd"] == pytest.approx(1.657, abs=0.001)
    assert result["cliques"] == [[0, 1], [1, 2]]


def test_expected_calibration_error_by_hand():
    # bin (0.9, 1.0]: confidence 0.95, accuracy 1/2 -> 2/4 * 0.45;
    # bin (0.6, 0.7]: confidence 0.65, accuracy 1 -> 2/4 * 0.35
    result = compare.calibration([0.95, 0.95, 0.65, 0.65], [1, 0, 1, 1], bins=10)
    assert result["ece"] == pytest.approx(0.5 * 0.45 + 0.5 * 0.35)
    assert [(b["low"], b["count"], b["accuracy"]) for b in result["bins"]] == [
        (pytest.approx(0.6), 2, 1.0), (pytest.approx(0.9), 2, 0.5)]
    assert compare.calibration([0.7, 0.7], [1, 1], bins=10)["ece"] == pytest.approx(0.3)


def predictions_of(correct: list[list[int]], labels=("anger", "joy")) -> pd.DataFrame:
    """Test predictions of a two-class model: fold k's faces right where correct[k] is 1."""
    rows = []
    for fold, faces in enumerate(correct):
        for uid, right in enumerate(faces):
            label = labels[uid % 2]
            predicted = label if right else labels[1 - uid % 2]
            rows.append({"fold": fold, "uid": uid, "label": label, "predicted": predicted,
                         f"p_{labels[0]}": 0.8 if predicted == labels[0] else 0.2,
                         f"p_{labels[1]}": 0.2 if predicted == labels[0] else 0.8})
    return pd.DataFrame(rows)


def results_of(model: str, correct: list[list[int]]) -> compare.Results:
    predictions = predictions_of(correct)
    scores = [{"fold": k, "accuracy": float(np.mean(c)),
               "macro_f1": evaluate.classification_metrics(
                   *compare.encoded(predictions[predictions["fold"] == k], ["anger", "joy"]),
                   ["anger", "joy"])["macro_f1"]}
              for k, c in enumerate(correct)]
    return compare.Results(model, scores, predictions)


def split_table(folds: int, train: int, test: int) -> pd.DataFrame:
    return pd.DataFrame([{"fold": k, "role": role, "uid": i} for k in range(folds)
                         for role, n in (("train", train), ("val", 2), ("test", test))
                         for i in range(n)])


def test_study_statistics_compares_every_pair_on_the_same_folds():
    a = results_of("a", [[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 1]])
    b = results_of("b", [[1, 0, 1, 0], [1, 1, 0, 0], [0, 1, 0, 1]])
    out = compare.study_statistics([a, b], ["anger", "joy"], split_table(3, 8, 4), seed=0)
    assert out["test_train_ratio"] == 0.5
    pair = out["pairs"][0]
    assert (pair["a"], pair["b"]) == ("a", "b")
    # per-fold differences 0.25, 0.5, 0.25
    assert pair["accuracy"]["mean"] == pytest.approx(1 / 3)
    assert pair["accuracy"] == pytest.approx({
        **compare.corrected_t_interval([0.25, 0.5, 0.25], 0.5),
        "wilcoxon_p": compare.wilcoxon_p([0.25, 0.5, 0.25])})
    assert (pair["mcnemar"]["a_only"], pair["mcnemar"]["b_only"]) == (4, 0)
    model = out["models"]["a"]
    assert model["accuracy"]["mean"] == pytest.approx(10 / 12)
    assert model["calibration"]["ece"] == pytest.approx(abs(10 / 12 - 0.8))


def test_a_single_fold_study_gets_bootstrap_intervals():
    a = results_of("a", [[1] * 30 + [0] * 10])
    b = results_of("b", [[1] * 20 + [0] * 20])
    out = compare.study_statistics([a, b], ["anger", "joy"], split_table(1, 80, 40), seed=0)
    assert out["models"]["a"]["interval"].startswith("percentile bootstrap")
    interval = out["models"]["a"]["accuracy"]
    assert interval["low"] < 0.75 < interval["high"]
    difference = out["pairs"][0]["accuracy"]
    assert difference["mean"] == pytest.approx(0.25) and difference["low"] > 0


def test_models_on_different_folds_or_faces_are_refused():
    a = results_of("a", [[1, 1], [1, 0]])
    with pytest.raises(ValueError, match="same folds"):
        compare.pair_statistics(a, results_of("b", [[1, 1]]), ["anger", "joy"], 0.5, 0)
    other = compare.Results("c", a.scores, a.predictions.assign(uid=a.predictions["uid"] + 1))
    with pytest.raises(ValueError, match="same faces"):
        compare.pair_statistics(a, other, ["anger", "joy"], 0.5, 0)


def test_unpaired_difference_without_overlap_is_welchs_t_test():
    honest, leaky = [0.81, 0.77, 0.86, 0.74, 0.80], [0.97, 0.99, 0.98, 0.99, 0.96]
    result = compare.unpaired_difference(honest, 0.0, leaky, 0.0)
    welch = stats.ttest_ind(honest, leaky, equal_var=False)
    assert result["mean"] == pytest.approx(np.mean(honest) - np.mean(leaky))
    assert result["p"] == pytest.approx(welch.pvalue, rel=1e-9)
    low, high = welch.confidence_interval(0.95)
    assert (result["low"], result["high"]) == pytest.approx((low, high), rel=1e-9)
    corrected = compare.unpaired_difference(honest, 0.25, leaky, 0.25)
    assert corrected["high"] - corrected["low"] > high - low


def test_wilson_interval_by_hand():
    # 8 of 10: centre (8 + 1.96^2 / 2) / (10 + 1.96^2), half-width
    # 1.96 sqrt(0.8 * 0.2 / 10 + 1.96^2 / 400) / (1 + 1.96^2 / 10)
    z = stats.norm.ppf(0.975)
    centre = (8 + z * z / 2) / (10 + z * z)
    half = z * math.sqrt(0.8 * 0.2 / 10 + z * z / 400) / (1 + z * z / 10)
    result = compare.wilson_interval(8, 10)
    assert result["mean"] == 0.8
    assert (result["low"], result["high"]) == pytest.approx((centre - half, centre + half))


def test_score_intervals_stay_within_zero_and_one():
    scores = [0.99, 0.8, 0.98]
    spread = [{"fold": k, "accuracy": a, "macro_f1": a} for k, a in enumerate(scores)]
    predictions = predictions_of([[1, 1], [1, 0], [1, 1]])
    out = compare.model_statistics(spread, predictions, ["anger", "joy"], 0.5, seed=0)
    raw = compare.corrected_t_interval(scores, 0.5)
    assert raw["high"] > 1 and out["accuracy"]["high"] == 1.0
    assert 0 < raw["low"] == pytest.approx(out["accuracy"]["low"])
