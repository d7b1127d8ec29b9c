"""The HOG + linear SVM baseline: what it fits is exactly scikit-learn's SVM, chosen on the
validation split, and it travels through model.pt like any model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.svm import LinearSVC

from ferbench import jobs, models
from ferbench import train as train_mod


def striped_faces(n: int, seed: int, classes=(0, 1, 2)) -> train_mod.Split:
    """Faces whose class is the orientation of their stripes (horizontal, vertical, two
    diagonals), under noise: separable by gradient orientation, not by mean intensity."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    patterns = [yy, xx, xx + yy, xx - yy]
    labels = rng.choice(classes, n)
    faces = np.stack([127 + 80 * np.sin(patterns[c] * 0.8 + rng.uniform(0, 6))
                      + rng.normal(0, 20, (32, 32)) for c in labels])
    return train_mod.Split.from_arrays(faces.clip(0, 255).astype(np.uint8), labels, 32)


@pytest.fixture
def fitted():
    spec = models.get("hog_svm")
    hp = spec.hyperparameters({"input_size": 32, "c_grid": [0.0001, 0.01, 1.0]})
    model = spec.build(3, hp)
    train, val = striped_faces(90, 0), striped_faces(30, 1)
    history, state, best_epoch = train_mod.fit_closed_form(model, train, val, seed=0)
    return spec, hp, model, train, val, history, state, best_epoch


def test_the_scores_are_the_svm_chosen_on_validation(fitted):
    spec, hp, model, train, val, history, _, best_epoch = fitted
    assert list(history["C"]) == hp["c_grid"] and history["chosen"].sum() == 1
    assert best_epoch == history.loc[history["val_acc"].idxmax(), "epoch"]
    chosen_c = history.loc[history["chosen"], "C"].item()
    x_train = train_mod.as_input(train.images, torch.device("cpu"))
    x_val = train_mod.as_input(val.images, torch.device("cpu"))
    reference = LinearSVC(C=chosen_c, random_state=0, max_iter=hp["max_iter"]).fit(
        model.features(x_train), train.targets.numpy())
    scores = model(x_val).detach().numpy()
    np.testing.assert_allclose(scores, reference.decision_function(model.features(x_val)),
                               rtol=1e-4, atol=1e-4)
    assert (scores.argmax(1) == val.targets.numpy()).mean() > 0.9


def test_a_class_the_training_split_lacks_is_never_predicted():
    spec = models.get("hog_svm")
    model = spec.build(4, spec.hyperparameters({"input_size": 32, "c_grid": [1.0]}))
    train, val = striped_faces(40, 0, classes=(1, 3)), striped_faces(20, 1, classes=(1, 3))
    train_mod.fit_closed_form(model, train, val, seed=0)
    predicted = model(train_mod.as_input(val.images, torch.device("cpu"))).argmax(1)
    assert set(predicted.tolist()) <= {1, 3}
    assert (predicted == val.targets).float().mean() > 0.9  # two classes: one hyperplane


def test_model_pt_round_trip_predicts_the_same(fitted, tmp_path):
    spec, hp, model, _, val, _, state, best_epoch = fitted
    path = jobs.save_model(tmp_path / "model.pt", "hog_svm", ["a", "b", "c"], hp, state,
                           {"size": 32}, best_epoch)
    loaded, saved = jobs.load_model(path)
    x = train_mod.as_input(val.images, torch.device("cpu"))
    assert saved["input_size"] == 32
    assert torch.equal(loaded(x), model(x))


def test_attention_and_representations_have_their_shapes(fitted):
    *_, val, _, _, _ = fitted
    model = fitted[2]
    x = train_mod.as_input(val.images[:5], torch.device("cpu"))
    maps = model.attention_maps(x)
    assert maps["svm_weight"].shape == (5, 5, 5)  # 32 px in 6 px cells
    assert (maps["svm_weight"] > 0).all()  # every cell is covered by some block
    assert model.representations(x)["hog"].shape == (5, model.linear.in_features)


def test_its_start_says_it_starts_from_nothing():
    spec = models.get("hog_svm")
    assert jobs.describe_start(spec, spec.hyperparameters()).startswith("fitted in closed form")


def test_subject_folds_choose_c_on_every_face_no_fit_saw():
    """With inner folds, C is the grid's value with the best accuracy pooled over the
    validation faces and each fold's scored faces, the latter predicted by an SVM fitted
    on the fold's other faces alone; the kept SVM is still the one fitted on all of them."""
    spec = models.get("hog_svm")
    hp = spec.hyperparameters({"input_size": 32, "c_grid": [1e-5, 1e-3, 1.0]})
    model = spec.build(3, hp)
    train, val = striped_faces(60, 0), striped_faces(6, 1)
    flipped = np.random.default_rng(5).random(60) < 0.4  # label noise: C matters
    train.targets[flipped] = (train.targets[flipped] + 1) % 3
    positions = np.arange(60)
    held_out = [(positions[positions % 3 != k], positions[positions % 3 == k]) for k in range(3)]
    history, _, best_epoch = train_mod.fit_closed_form(model, train, val, seed=0,
                                                       held_out=held_out)
    features = model.features(train_mod.as_input(train.images, torch.device("cpu"))).numpy()
    targets = train.targets.numpy()
    for row in history.itertuples():
        hits = [(LinearSVC(C=row.C, random_state=0, max_iter=hp["max_iter"])
                 .fit(features[fitted], targets[fitted]).predict(features[scored])
                 == targets[scored]) for fitted, scored in held_out]
        assert row.subject_folds_acc == pytest.approx(np.concatenate(hits).mean())
        assert row.pooled_acc == pytest.approx((row.subject_folds_acc * 60 + row.val_acc * 6)
                                               / 66)
    assert best_epoch == history.loc[history["pooled_acc"].idxmax(), "epoch"]
    # here the six validation faces alone would have kept another C
    assert best_epoch != history.loc[history["val_acc"].idxmax(), "epoch"]
    kept = LinearSVC(C=history.loc[history["chosen"], "C"].item(), random_state=0,
                     max_iter=hp["max_iter"]).fit(features, targets)
    x_val = train_mod.as_input(val.images, torch.device("cpu"))
    np.testing.assert_allclose(model(x_val).detach().numpy(),
                               kept.decision_function(model.features(x_val)), rtol=1e-4,
                               atol=1e-4)
