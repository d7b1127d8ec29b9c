"""Training recipes: the papers' own, and a named alternative for small real datasets.

Every model accepts the keys of TRAINING_DEFAULTS beside its paper's hyperparameters; their
values there reproduce the paper's training exactly (no online augmentation, the model's own
lr schedule, plain cross-entropy). A recipe is a named set of these keys (PRESETS): a study
picks one with `recipe:` and still overrides any key by name. The papers' recipe stays the
default; `small_data` is ours, for training from scratch on a few hundred faces (JAFFE,
CK+), where the papers' recipes overfit and lose to a HOG + linear SVM.
"""

from __future__ import annotations

#: Online augmentation when `online_augment: true`; a dict given instead updates these.
#: The values are the offline augmentation's (config `augment:`, augment.py), so the two
#: draw from one distribution, except a wider rotation: online draws are new each epoch.
ONLINE_AUGMENT = {
    "min_crop": 0.85,  # side of the random crop, fraction of the face (area ~0.72-1)
    "flip": True,  # expressions are left-right symmetric enough: the usual FER flip
    "rotate_deg": 10.0,  # uniform in [-10, 10] degrees: the head tilts of posed datasets
}

#: The training keys every model accepts, at values that reproduce the papers' recipes.
TRAINING_DEFAULTS = {
    "recipe": "paper",
    # false, true (ONLINE_AUGMENT), or a dict of ONLINE_AUGMENT's keys updating it
    "online_augment": False,
    # paper: the model's own (constant, or x lr_decay every lr_step epochs) | cosine | plateau
    "schedule": "paper",
    "plateau_factor": 0.5,  # plateau: lr x factor ...
    "plateau_patience": 5,  # ... after this many epochs without a lower validation loss
    "warmup_epochs": 0,  # linear warmup: epoch e <= w trains at lr * e / (w + 1)
    "label_smoothing": 0.0,
    "class_balance": "none",  # none | loss (inverse-frequency class weights) | sampler
    # Evaluation, not training: average each test face's class probabilities with its
    # mirror image's (train.predict), and score the validation faces the same way, so the
    # epoch (or C) kept is the one that predicts best as tested. Off in the papers; ours
    # where a study says so.
    "test_flip": False,
    # Model selection, not training: the start weights are scored on validation before the
    # first epoch (epoch 0 of the history) and kept unless an epoch beats them. For
    # fine-tuning on the faces a start was trained on (FER2013's mini-Xception on FER2013's
    # Training split), where more epochs may only lose what the start had.
    "keep_start": False,
}

PRESETS: dict[str, dict] = {
    "paper": {},
    "small_data": {
        # Random crop, flip and small rotation redrawn every epoch: common FER practice for
        # training from scratch (Pramerdorfer & Kampel 2016 train every FER2013 CNN they
        # compare with random crops and flips), and more faces than a few hundred can give.
        "online_augment": True,
        # Cosine decay (Loshchilov & Hutter 2017) with a short linear warmup (Goyal et al.
        # 2017): no step epochs to tune per dataset, and the final low-lr epochs average out
        # the noise of batches drawn from a few hundred faces.
        "schedule": "cosine",
        "warmup_epochs": 3,
        # 0.1, Szegedy et al. 2016's value: keeps a small net from driving its logits to
        # infinity on a training set it can memorise.
        "label_smoothing": 0.1,
        # Inverse-frequency class weights (King & Zeng 2001; sklearn's "balanced"): FER2013
        # has 547 disgust faces of 35,887, and a rare class must still pull its weight.
        # The loss rather than the sampler: every face is still seen once per epoch.
        "class_balance": "loss",
    },
}

SCHEDULES = ("paper", "cosine", "plateau")
CLASS_BALANCES = ("none", "loss", "sampler")


def with_preset(defaults: dict, overrides: dict) -> dict:
    """`defaults` < PRESETS[recipe] < `overrides`, the recipe named by the overrides first."""
    recipe = overrides.get("recipe", defaults.get("recipe", "paper"))
    if recipe not in PRESETS:
        raise ValueError(f"unknown recipe {recipe!r} (known: {', '.join(PRESETS)})")
    return {**defaults, **PRESETS[recipe], **overrides}


def online_augment_settings(value) -> dict | None:
    """The `online_augment` key as ONLINE_AUGMENT-shaped settings, None when off."""
    if value is False or value is None:
        return None
    if value is True:
        return dict(ONLINE_AUGMENT)
    unknown = sorted(set(value) - set(ONLINE_AUGMENT))
    if unknown:
        raise KeyError(f"online_augment has no setting {', '.join(unknown)} "
                       f"(it has: {', '.join(ONLINE_AUGMENT)})")
    return {**ONLINE_AUGMENT, **value}
