"""Training recipes: schedules, online augmentation, class balance, label smoothing, presets."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from ferbench import config as config_mod
from ferbench import recipes, train
from ferbench.models import REGISTRY, get
from ferbench.models.losses import margin_loss
from tests.conftest import tiny_config

IDENTITY = {"min_crop": 1.0, "flip": False, "rotate_deg": 0.0}


def lrs(hp, epochs, history=()):
    return [train.scheduled_lr(hp, e, list(history)[:e - 1]) for e in range(1, epochs + 1)]


@pytest.mark.parametrize("name", [name for name, spec in REGISTRY.items()
                                  if "lr" in spec.defaults])  # not the closed-form/evaluated
def test_paper_schedule_is_the_models_own(name):
    """Every model's defaults still train at its paper's lr: constant, or the step decay."""
    hp = get(name).hyperparameters()
    step = [hp["lr"] * hp["lr_decay"] ** ((e - 1) // hp["lr_step"]) if "lr_decay" in hp
            else hp["lr"] for e in range(1, 61)]
    assert lrs(hp, 60) == pytest.approx(step, rel=1e-12)


def test_mobilenet_paper_schedule_steps_every_lr_step():
    hp = get("mobilenet_cl").hyperparameters()
    assert lrs(hp, 31)[::15] == pytest.approx([0.01, 0.01 * 0.94, 0.01 * 0.94 ** 2])


def test_cosine_is_torch_cosine_annealing_after_a_linear_warmup():
    hp = {"lr": 0.1, "epochs": 12, "schedule": "cosine", "warmup_epochs": 2}
    got = lrs(hp, 12)
    assert got[:3] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1])  # warmup, then lr exactly
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    annealing = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    expected = []
    for _ in range(10):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        annealing.step()
    assert got[2:] == pytest.approx(expected)
    # The last epoch trains one step short of 0, then decreasing all the way.
    assert got[-1] == pytest.approx(0.1 * (1 + math.cos(math.pi * 9 / 10)) / 2)
    assert all(a > b for a, b in zip(got[2:], got[3:]))


def test_plateau_reduces_after_patience_like_reduce_lr_on_plateau():
    val_losses = [1.0, 0.9, 0.95, 0.93, 0.92, 0.8, 0.85, 0.85, 0.85, 0.85, 0.85, 0.85]
    hp = {"lr": 0.1, "epochs": 13, "schedule": "plateau", "plateau_factor": 0.5,
          "plateau_patience": 2}
    got = lrs(hp, 13, [{"val_loss": v} for v in val_losses])
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=2)
    expected = [0.1]
    for loss in val_losses:
        plateau.step(loss)
        expected.append(optimizer.param_groups[0]["lr"])
    assert got == pytest.approx(expected)
    # 3 epochs without a new best (patience 2) halve lr; six after 0.8 halve it twice more.
    assert got[4] == 0.1 and got[5] == 0.05 and got[-1] == 0.0125


def test_adamw_decouples_weight_decay():
    parameter = torch.nn.Parameter(torch.ones(1))
    optimizer = train.make_optimizer(torch.nn.ParameterList([parameter]),
                                     {"optimizer": "adamw", "lr": 0.1, "weight_decay": 0.5})
    parameter.grad = torch.zeros(1)
    optimizer.step()  # zero gradient: only the decay moves it, by lr * wd
    assert isinstance(optimizer, torch.optim.AdamW) and parameter.item() == pytest.approx(0.95)


def test_unknown_schedule_and_class_balance_are_named():
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        train.scheduled_lr({"lr": 0.1, "schedule": "step"}, 1)
    split = train.Split.from_arrays(np.zeros((2, 8, 8), np.uint8), [0, 1], 8)
    with pytest.raises(ValueError, match="unknown class_balance 'both'"):
        train.epoch_order(split, {"class_balance": "both"}, 0, 1)


def faces_with_a_copy(n=6, side=24, seed=0):
    """(n, 2, S, S) in [-1, 1]: a random face and its exact copy as the second channel."""
    face = torch.rand(n, 1, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return torch.cat([face, face], 1)


def augmented(x, seed=0, epoch=1, settings=None):
    return train.online_augment(x, settings or recipes.ONLINE_AUGMENT,
                                train.epoch_generator(seed, epoch, 2))


def test_online_augmentation_is_fixed_by_seed_and_epoch():
    x = faces_with_a_copy()
    assert torch.equal(augmented(x), augmented(x))
    assert not torch.allclose(augmented(x, epoch=1), augmented(x, epoch=2))
    assert not torch.allclose(augmented(x, seed=0), augmented(x, seed=1))


def test_online_augmentation_moves_every_channel_of_a_sample_together():
    out = augmented(faces_with_a_copy())
    assert out.shape == (6, 2, 24, 24)
    assert torch.equal(out[:, 0], out[:, 1])


def test_online_augmentation_changes_every_image_and_keeps_its_range():
    x = faces_with_a_copy()
    out = augmented(x)
    assert ((out - x).abs().flatten(1).mean(1) > 0.05).all()
    assert out.min() >= x.min() - 1e-6 and out.max() <= x.max() + 1e-6  # bilinear, border


def test_online_augmentation_flip_alone_mirrors_some_faces_and_keeps_the_others():
    x = faces_with_a_copy(n=16)
    out = augmented(x, settings={**IDENTITY, "flip": True})
    kept = (out - x).abs().flatten(1).amax(1) < 1e-5
    mirrored = (out - x.flip(-1)).abs().flatten(1).amax(1) < 1e-5
    assert (kept | mirrored).all() and kept.any() and mirrored.any()


def test_online_augmentation_grid_is_torchs_affine_grid():
    theta = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(0))
    for height, width in [(24, 24), (16, 40)]:
        expected = F.affine_grid(theta, [5, 1, height, width], align_corners=False)
        assert torch.allclose(train.affine_grid(theta, height, width), expected, atol=1e-6)


def test_online_augmentation_at_identity_settings_and_off():
    x = faces_with_a_copy()
    assert torch.allclose(augmented(x, settings=IDENTITY), x, atol=1e-5)
    assert recipes.online_augment_settings(False) is None
    assert recipes.online_augment_settings(True) == recipes.ONLINE_AUGMENT
    assert recipes.online_augment_settings({"rotate_deg": 3})["rotate_deg"] == 3
    with pytest.raises(KeyError, match="online_augment has no setting shear"):
        recipes.online_augment_settings({"shear": 3})


def imbalanced_split():
    targets = [0] * 80 + [1] * 15 + [2] * 5
    return train.Split.from_arrays(np.zeros((100, 4, 4), np.uint8), targets, 4)


def test_class_balanced_sampler_draws_classes_about_equally():
    split = imbalanced_split()
    hp = {"class_balance": "sampler"}
    order = train.epoch_order(split, hp, seed=0, epoch=1)
    counts = torch.bincount(split.targets[order], minlength=3)
    assert len(order) == 100 and (counts > 20).all() and (counts < 47).all(), counts
    assert torch.equal(order, train.epoch_order(split, hp, seed=0, epoch=1))
    assert not torch.equal(order, train.epoch_order(split, hp, seed=0, epoch=2))
    # Without it, one epoch is a permutation: every face exactly once.
    plain = train.epoch_order(split, {"class_balance": "none"}, seed=0, epoch=1)
    assert sorted(plain.tolist()) == list(range(100))


def test_balanced_class_weights_equalise_each_class_total():
    targets = torch.tensor([0, 0, 0, 2])  # class 1 absent: weight 1
    weights = train.balanced_class_weights(targets)
    assert weights.tolist() == pytest.approx([4 / (2 * 3), 1.0, 4 / (2 * 1)])
    assert (weights[targets].sum() / 2) == pytest.approx(weights[0] * 3)


def classifier(name="deep_emotion"):
    spec = get(name)
    tiny = {"input_size": 32, "width": 1 / 16} if name != "deep_emotion" else {}
    return spec.build(3, spec.hyperparameters(tiny))


def test_label_smoothing_and_class_weights_shape_the_cross_entropy():
    model = classifier()
    logits = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 1, 2, 0, 0, 1, 2, 2])
    assert model.classification_loss(logits, targets) == pytest.approx(
        F.cross_entropy(logits, targets).item())
    weights = torch.tensor([0.5, 2.0])  # shorter than K: the third class weighs 1
    model.set_loss_recipe(0.1, weights)
    expected = F.cross_entropy(logits, targets, weight=torch.tensor([0.5, 2.0, 1.0]),
                               label_smoothing=0.1)
    assert model.classification_loss(logits, targets).item() == pytest.approx(expected.item())
    assert expected.item() != pytest.approx(F.cross_entropy(logits, targets).item())


@pytest.mark.parametrize("name", [name for name, spec in REGISTRY.items()
                                  if spec.trains_by_gradient and not spec.starts_from])
def test_every_trained_models_loss_follows_the_recipe(name):
    """Label smoothing and class weights change every trained model's loss: a model whose
    loss ignored them (minixception_ft's plain cross-entropy did) trained on the paper's
    recipe whatever the study asked. Exact inequality: ignoring them gives the same bits."""
    torch.manual_seed(0)
    spec = get(name)
    tiny = {} if name == "deep_emotion" else {
        key: value for key, value in {"input_size": 64, "width": 1 / 16}.items()
        if key in spec.defaults}
    side = spec.input_size(tiny)
    model = spec.build(3, spec.hyperparameters(tiny)).eval()
    images = torch.randint(0, 256, (4, 1 + len(spec.extra_channels), side, side),
                           dtype=torch.uint8)
    targets, samples = torch.tensor([0, 1, 2, 0]), torch.arange(4)
    model.prepare(images, targets)  # DAM-CNN's decoders pick their targets here
    x = train.as_input(images, torch.device("cpu"))
    with torch.no_grad():
        plain, _ = model.training_objective(x, targets, samples)
        model.set_loss_recipe(0.3, torch.tensor([4.0, 0.25, 1.0]))
        shaped, _ = model.training_objective(x, targets, samples)
    assert shaped.item() != plain.item()


def test_the_recipe_reaches_a_models_head():
    """Capsule-family models compute their loss in a head, which the model's recipe reaches."""
    model = classifier("vgg16")
    model.set_loss_recipe(0.2, torch.ones(3))
    assert model.head.label_smoothing == 0.2 and torch.equal(model.head.class_weights,
                                                             torch.ones(3))


def test_class_weighted_margin_loss_is_the_weighted_sample_mean():
    lengths = torch.tensor([[0.95, 0.05], [0.5, 0.5]])
    targets = torch.tensor([0, 1])
    per_sample = [0.0, 0.4 ** 2 + 0.5 * 0.4 ** 2]  # Eq. 3 by hand
    weights = torch.tensor([1.0, 3.0])
    assert margin_loss(lengths, targets, weights).item() == pytest.approx(
        (1 * per_sample[0] + 3 * per_sample[1]) / 4)
    assert margin_loss(lengths, targets).item() == pytest.approx(sum(per_sample) / 2)


def test_small_data_recipe_expands_below_explicit_keys():
    spec = get("deep_emotion")
    hp = spec.hyperparameters({"recipe": "small_data", "label_smoothing": 0.2})
    assert hp["schedule"] == "cosine" and hp["online_augment"] is True
    assert hp["class_balance"] == "loss" and hp["warmup_epochs"] == 3
    assert hp["label_smoothing"] == 0.2  # the explicit key wins over the preset
    assert hp["lr"] == spec.defaults["lr"]  # the paper's optimizer settings stay
    assert spec.hyperparameters(hp) == hp  # resolving twice changes nothing
    paper = spec.hyperparameters()
    assert {k: paper[k] for k in recipes.TRAINING_DEFAULTS} == recipes.TRAINING_DEFAULTS
    with pytest.raises(ValueError, match="unknown recipe 'tiny'"):
        spec.hyperparameters({"recipe": "tiny"})


def test_schema_knows_every_recipe_and_names_a_bad_training_key(tmp_path, root):
    schema = config_mod.load_schema()["$defs"]["model"]["properties"]
    assert schema["recipe"]["enum"] == list(recipes.PRESETS)
    assert schema["schedule"]["enum"] == list(recipes.SCHEDULES)
    assert schema["class_balance"]["enum"] == list(recipes.CLASS_BALANCES)
    for key, value in [("schedule", "step"), ("online_augment", {"min_crop": 2}),
                       ("label_smoothing", 1.5), ("recipe", "tiny")]:
        raw = tiny_config(tmp_path)
        raw["models"]["deep_emotion"][key] = value
        with pytest.raises(config_mod.ConfigError, match=f"models.deep_emotion.{key}"):
            config_mod.validate(raw)
    raw = tiny_config(tmp_path)
    raw["models"]["deep_emotion"].update(recipe="small_data", schedule="plateau")
    config_mod.validate(raw)


def tiny_split(n=48, seed=0, balanced=False):
    """Three classes told apart by brightness; class 0 takes three quarters of the faces
    unless `balanced`."""
    rng = np.random.default_rng(seed)
    targets = (np.arange(n) % 3 if balanced
               else np.r_[np.zeros(n - n // 4, int), rng.integers(1, 3, n // 4)])
    images = (rng.integers(0, 60, (n, 24, 24)) + targets[:, None, None] * 60).astype(np.uint8)
    return train.Split.from_arrays(images, targets, 24)


def run_fit(folder, epochs, **recipe):
    torch.manual_seed(0)
    spec = get("deep_emotion")
    hp = spec.hyperparameters({"input_size": 24, "epochs": epochs, "patience": 99,
                               "batch_size": 16, **recipe})
    folder.mkdir(exist_ok=True)
    val = tiny_split(24, 1)
    val.targets = (val.targets + 1) % 3  # mislabelled: its loss rises, the plateau cuts lr
    return train.fit(spec.build(3, hp), hp, tiny_split(), val,
                     folder / "ckpt.pt", seed=0, device=torch.device("cpu"), progress=False,
                     fingerprint="f")


def test_killed_fit_with_plateau_and_online_augmentation_resumes_identically(tmp_path,
                                                                            one_thread):
    recipe = {"recipe": "small_data", "schedule": "plateau", "plateau_patience": 0,
              "class_balance": "sampler", "warmup_epochs": 1, "lr": 0.01}
    full, full_best, _, _ = run_fit(tmp_path / "a", 8, **recipe)
    run_fit(tmp_path / "b", 5, **recipe)  # "killed" after epoch 5: the checkpoint stays
    resumed, resumed_best, _, _ = run_fit(tmp_path / "b", 8, **recipe)
    np.testing.assert_array_equal(resumed.drop(columns="seconds").to_numpy(),
                                  full.drop(columns="seconds").to_numpy())
    assert all(torch.equal(full_best[k], resumed_best[k]) for k in full_best)
    assert full["lr"].nunique() > 3  # warmup, then plateau cuts, after the resume too
    assert not math.isclose(full["train_loss"][0],
                            run_fit(tmp_path / "c", 1)[0]["train_loss"][0])


def test_test_flip_averages_each_face_with_its_mirror():
    """`test_flip` predictions are the mean of the face's and its mirror's, so a face and its
    mirror get the same answer; without it a random net tells them apart."""
    torch.manual_seed(0)
    spec = get("deep_emotion")
    hp = spec.hyperparameters({"input_size": 24, "test_flip": True})
    model, split, cpu = spec.build(3, hp), tiny_split(8), torch.device("cpu")
    mirrored = train.Split(split.images.flip(-1), split.targets)
    plain, plain_mirror = train.predict(model, split, cpu), train.predict(model, mirrored, cpu)
    voted = train.predict(model, split, cpu, batch_size=3, flip=hp["test_flip"])
    assert not torch.allclose(plain, plain_mirror)
    assert torch.allclose(voted, (plain + plain_mirror) / 2, atol=1e-6)
    assert torch.allclose(voted, train.predict(model, mirrored, cpu, flip=True), atol=1e-6)
    assert spec.hyperparameters()["test_flip"] is False  # the papers evaluate one view


def test_a_test_flip_model_is_selected_on_validation_as_it_is_tested():
    """With `test_flip` the validation accuracy that picks the epoch (and a closed-form
    model's C) is that of `predict`'s two views; the loss stays the plain view's."""
    torch.manual_seed(0)
    hog, cpu = get("hog_svm"), torch.device("cpu")
    model = hog.build(3, hog.hyperparameters({"input_size": 24, "c_grid": [1.0]}))
    with torch.no_grad():  # random hyperplanes over HOG, which a mirror changes
        model.linear.weight.normal_()
    split = tiny_split(64)
    plain_loss, plain_acc = train.evaluate_loss(model, split, cpu)
    loss, acc = train.evaluate_loss(model, split, cpu, batch_size=5, flip=True)
    plain = train.predict(model, split, cpu).argmax(1)
    voted = train.predict(model, split, cpu, flip=True).argmax(1)
    assert (voted != plain).any()
    assert loss == pytest.approx(plain_loss)
    assert acc == pytest.approx((voted == split.targets).float().mean().item())
    assert plain_acc == pytest.approx((plain == split.targets).float().mean().item())

    val = tiny_split(64, seed=3)  # where the SVM's two views score 75.0% and its own 70.3%
    for flip in (False, True):
        model = hog.build(3, hog.hyperparameters({"input_size": 24, "c_grid": [1.0]}))
        history, _, _ = train.fit_closed_form(model, tiny_split(64, seed=2), val, 0, flip=flip)
        chosen = history.loc[history["chosen"], "val_acc"].item()
        predicted = train.predict(model, val, cpu, flip=flip).argmax(1)
        assert chosen == pytest.approx((predicted == val.targets).float().mean().item())


def test_schema_takes_test_flip_as_a_boolean(tmp_path):
    raw = tiny_config(tmp_path)
    raw["models"]["deep_emotion"]["test_flip"] = True
    config_mod.validate(raw)
    raw["models"]["deep_emotion"]["test_flip"] = "yes"
    with pytest.raises(config_mod.ConfigError, match="models.deep_emotion.test_flip"):
        config_mod.validate(raw)


def test_keep_start_keeps_the_start_weights_unless_an_epoch_beats_them(tmp_path, one_thread):
    """`keep_start` makes the start weights epoch 0, the first candidate of model selection.
    A start that tells the validation faces apart, then trained on swapped labels: only with
    `keep_start` does the run keep the start. From a random start an epoch still wins."""
    spec, cpu = get("deep_emotion"), torch.device("cpu")
    # Balanced: on the default split, predicting class 0 alone is already 75% right.
    faces, val = tiny_split(balanced=True), tiny_split(24, 1, balanced=True)
    swapped = tiny_split(balanced=True)
    swapped.targets = (swapped.targets + 1) % 3

    def fit(folder, train_split, start=None, epochs=3, **recipe):
        torch.manual_seed(0)
        hp = spec.hyperparameters({"input_size": 24, "epochs": epochs, "patience": 99,
                                   "batch_size": 16, "lr": 0.01, **recipe})
        model = spec.build(3, hp)
        if start is not None:
            model.load_state_dict(start)
        (tmp_path / folder).mkdir()
        return train.fit(model, hp, train_split, val, tmp_path / folder / "ckpt.pt", seed=0,
                         device=cpu, progress=False, fingerprint="f")

    trained, start, start_epoch, _ = fit("start", faces, epochs=6)  # val_acc 1.0 by epoch 5
    start_loss, start_acc = trained.set_index("epoch").loc[start_epoch, ["val_loss", "val_acc"]]

    kept, kept_state, kept_epoch, _ = fit("kept", swapped, start, keep_start=True)
    assert kept_epoch == 0 and all(torch.equal(kept_state[k], start[k]) for k in start)
    assert list(kept["epoch"]) == [0, 1, 2, 3]
    assert kept.loc[0, ["val_loss", "val_acc"]].tolist() == pytest.approx([start_loss,
                                                                          start_acc])
    assert kept.loc[0, ["train_loss", "train_acc", "lr"]].isna().all()
    assert kept["val_acc"][1:].max() < start_acc  # every epoch lost to the start
    lost, _, lost_epoch, _ = fit("lost", swapped, start)
    assert lost_epoch >= 1 and list(lost["epoch"]) == [1, 2, 3]
    pd.testing.assert_frame_equal(lost.drop(columns="seconds"),
                                  kept[1:].drop(columns="seconds").reset_index(drop=True))

    _, _, scratch_epoch, _ = fit("scratch", faces, keep_start=True)
    assert scratch_epoch >= 1
