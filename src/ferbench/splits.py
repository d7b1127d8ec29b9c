"""Fold splitting: frame selection, class sets, and the evaluation protocols of SPEC.md.

Every protocol kind turns a face table into one long split table: one row per (sample, fold)
with role train / val / test. The leak audit starts here: `check_disjoint` proves, before a
table is written, that no subject (subject-based kinds) or image (the others) sits in two roles
of a fold, and `describe` says honestly whether a protocol is subject-independent on the data
it ran on.
"""

from __future__ import annotations

from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from ferbench.data.manifest import CLASS_SETS

ROLES = ("train", "val", "test")
#: Kinds that promise no subject in two roles of a fold (when the data names real people).
SUBJECT_KINDS = frozenset({"subject_kfold", "loso", "held_out", "cross_dataset"})
#: Kinds whose number of folds is configured; the others make a single fold, fold 0.
MULTI_FOLD_KINDS = frozenset({"subject_kfold", "image_kfold", "loso"})


class LeakError(AssertionError):
    """A split that lets a subject (or its images) reach both training and evaluation."""


class ProtocolError(ValueError):
    """A protocol the data cannot satisfy: wrong fold count, unknown split or subject, too few
    images."""


def fold_count(protocol: dict) -> int:
    """Folds a protocol makes; Snakemake needs this when it builds the DAG, before any data."""
    return protocol["folds"] if protocol["kind"] in MULTI_FOLD_KINDS else 1


def has_identities(faces: pd.DataFrame) -> bool:
    """Whether every row names a real person.

    Adapters of datasets without identities (FER2013, RAF-DB, SFEW) set `subject` to the
    image's own id: its path without extension (or the whole name for a row of a pixel table
    such as `fer2013.csv#12`). On such data no protocol keeps people apart.
    """
    stems = faces["image"].map(lambda image: PurePosixPath(image).with_suffix("").as_posix())
    own_id = (faces["subject"] == faces["image"]) | (faces["subject"] == stems)
    return not own_id.any()


def select_frames(faces: pd.DataFrame, mode: str) -> pd.DataFrame:
    """Pick frames per sequence as in the CK+ protocols of the MobileNet paper.

    `last`/`last3` keep the apex frame(s) of each sequence with the sequence's label;
    `*_first_neutral` also keep each sequence's first frame relabelled `neutral`.
    Neutral-labelled sequences contribute their apex frames only.
    """
    if mode == "all":
        return faces.copy()
    order = faces.sort_values(["subject", "sequence", "frame"], kind="stable")
    grouped = order.groupby(["subject", "sequence"], sort=False)
    keep = 3 if mode.startswith("last3") else 1
    apex = grouped.tail(keep)
    parts = [apex]
    if mode.endswith("first_neutral"):
        first = grouped.head(1)
        first = first[first["label"] != "neutral"].copy()
        first["label"] = "neutral"
        parts.append(first)
    out = pd.concat(parts)
    return out[~out.index.duplicated(keep="first")].sort_index()


def restrict_classes(faces: pd.DataFrame, class_set: str) -> pd.DataFrame:
    labels = CLASS_SETS[class_set]
    return faces[faces["label"].isin(labels)].copy()


def _stratified_splits(samples: pd.DataFrame, n_splits: int, seed: int, by_subject: bool):
    """Label-stratified (train, held-out) position pairs; with `by_subject` a subject never
    straddles two parts. Where every subject has one image (data without identities) grouping
    changes nothing, so the plain splitter is used: it is much faster on large datasets."""
    # Imported here: sklearn takes ~1.5 s to import, and every Snakefile start imports this
    # module (paths.studies needs fold_count).
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    groups = samples["subject"] if by_subject and not samples["subject"].is_unique else None
    splitter = (StratifiedKFold if groups is None else StratifiedGroupKFold)(
        n_splits=n_splits, shuffle=True, random_state=seed)
    return splitter.split(samples, samples["label"], groups)


def carve_validation(train: pd.DataFrame, val_fraction: float, seed: int,
                     by_subject: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a training part into (fit, validation), stratified by label.

    By subject, validation people are unseen in training, so model selection is as honest as
    the test; by image only for the image-level protocol. With fewer subjects than
    1 / val_fraction, one subject is held out (FERG's four training characters give one).
    """
    units = train["subject"].nunique() if by_subject else len(train)
    if units < 2:
        unit = "subjects" if by_subject else "images"
        raise ProtocolError(f"carving a validation split needs at least 2 training {unit}, "
                            f"found {units}")
    n_splits = min(round(1 / val_fraction), units)
    fit_idx, val_idx = next(_stratified_splits(train, n_splits, seed, by_subject))
    return train.iloc[fit_idx], train.iloc[val_idx]


def subject_folds(train: pd.DataFrame, n_splits: int, seed: int
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Inner folds of one fold's training faces (an augment table: subject, label, copy),
    for nested model selection: (fitted, scored) row positions per inner fold, label-
    stratified, no subject on both sides. Each face's augmented copies (`copy` > 0) go
    with their subject and are never scored: the scored faces are as a test face is."""
    originals = train[train["copy"] == 0]
    subjects = originals["subject"].nunique()
    n_splits = min(n_splits, subjects)
    if n_splits < 2:
        raise ProtocolError(f"subject_folds needs at least 2 training subjects, found "
                            f"{subjects}")
    folds = []
    for _, held in _stratified_splits(originals, n_splits, seed, by_subject=True):
        held_out = train["subject"].isin(set(originals["subject"].iloc[held]))
        folds.append((np.flatnonzero(~held_out.to_numpy()),
                      np.flatnonzero((held_out & (train["copy"] == 0)).to_numpy())))
    return folds


def _rows_named(samples: pd.DataFrame, column: str, names_by_role: dict) -> dict:
    """Rows of each role whose `column` (source split or subject) is one of the role's names.

    A name absent from the data, or given to two roles, is a configuration mistake: the error
    names it and lists what the data has.
    """
    present = set(samples[column])
    owner = {}
    for role, names in names_by_role.items():
        for name in names:
            if name not in present:
                raise ProtocolError(
                    f"{role}: {column} {name!r} is not in the data (it has: "
                    f"{', '.join(sorted(present)[:20])}{', ...' if len(present) > 20 else ''})")
            if name in owner:
                raise ProtocolError(f"{column} {name!r} is named for both {owner[name]} and {role}")
            owner[name] = role
    return {role: samples[samples[column].isin(names)] for role, names in names_by_role.items()}


def _kfold(samples: pd.DataFrame, protocol: dict, seed: int):
    """Stratified k-fold, grouped by subject (`subject_kfold`) or over images (`image_kfold`)."""
    by_subject = protocol["kind"] == "subject_kfold"
    folds = protocol["folds"]
    subjects = samples["subject"].nunique()
    if by_subject and subjects < folds:
        raise ProtocolError(f"{folds}-fold subject-independent split needs at least {folds} "
                            f"subjects, found {subjects}")
    for fold, (train_idx, test_idx) in enumerate(
            _stratified_splits(samples, folds, seed, by_subject)):
        fit, val = carve_validation(samples.iloc[train_idx], protocol["val_fraction"],
                                    seed + fold, by_subject)
        yield fold, {"train": fit, "val": val, "test": samples.iloc[test_idx]}


def _loso(samples: pd.DataFrame, protocol: dict, seed: int):
    """Leave-one-subject-out: fold k tests the k-th subject in sorted order."""
    subjects = sorted(samples["subject"].unique())
    if len(subjects) != protocol["folds"]:
        raise ProtocolError(
            f"leave-one-subject-out makes one fold per subject and the data (after class and "
            f"frame selection) has {len(subjects)} subjects; set folds: {len(subjects)}")
    for fold, subject in enumerate(subjects):
        tested = samples["subject"] == subject
        fit, val = carve_validation(samples[~tested], protocol["val_fraction"], seed + fold)
        yield fold, {"train": fit, "val": val, "test": samples[tested]}


def _predefined(samples: pd.DataFrame, protocol: dict, seed: int):
    """The dataset's own split; without `val` splits, validation is carved from training."""
    parts = _rows_named(samples, "source_split", {role: protocol[role] for role in ROLES})
    fit, val = parts["train"], parts["val"]
    if not protocol["val"]:
        fit, val = carve_validation(fit, protocol["val_fraction"], seed)
    yield 0, {"train": fit, "val": val, "test": parts["test"]}


def _held_out(samples: pd.DataFrame, protocol: dict, seed: int):
    """Named test (and optionally validation) subjects; everyone else trains."""
    parts = _rows_named(samples, "subject", {"test": protocol["test_subjects"],
                                             "val": protocol["val_subjects"]})
    named = protocol["test_subjects"] + protocol["val_subjects"]
    rest = samples[~samples["subject"].isin(named)]
    fit, val = rest, parts["val"]
    if not protocol["val_subjects"]:
        fit, val = carve_validation(rest, protocol["val_fraction"], seed)
    yield 0, {"train": fit, "val": val, "test": parts["test"]}


def _balanced(samples: pd.DataFrame, protocol: dict, seed: int):
    """DeepFER's balanced subset: a fixed number of images per class and role, seeded; train
    and validation are drawn (disjointly) from `train_splits`, test from `test_splits`."""
    pools = _rows_named(samples, "source_split", {"train": protocol["train_splits"],
                                                  "test": protocol["test_splits"]})
    per_class = protocol["per_class"]
    wanted = {"train": per_class["train"] + per_class["val"], "test": per_class["test"]}
    wanted_by = {"train": "per_class train + val", "test": "per_class test"}
    rng = np.random.default_rng(seed)
    drawn = {role: [] for role in ROLES}
    for label in sorted(set(samples["label"])):
        picks = {}
        for pool, need in wanted.items():
            rows = pools[pool][pools[pool]["label"] == label]
            if len(rows) < need:
                sources = ", ".join(protocol[f"{pool}_splits"])
                raise ProtocolError(f"balanced subset needs {need} images of class {label!r} "
                                    f"from {sources} ({wanted_by[pool]}), the data has "
                                    f"{len(rows)}")
            picks[pool] = rows.iloc[rng.permutation(len(rows))[:need]]
        drawn["train"].append(picks["train"].iloc[:per_class["train"]])
        drawn["val"].append(picks["train"].iloc[per_class["train"]:])
        drawn["test"].append(picks["test"])
    yield 0, {role: pd.concat(parts) for role, parts in drawn.items()}


def _cross_dataset(samples: pd.DataFrame, protocol: dict, seed: int):
    """Train (and validate) on the study's dataset, test on every face of `test_dataset`.

    Only classes both datasets have take part. Test subjects are prefixed with the test
    dataset's name, so the leak check tells the two datasets' people apart; their `uid`s index
    the test dataset's faces array (the evaluate rule reads that one).
    """
    own, test = samples[~samples["_test_dataset"]], samples[samples["_test_dataset"]]
    shared = set(own["label"]) & set(test["label"])
    if not shared:
        raise ProtocolError(f"the study's dataset and {protocol['test_dataset']} share no class")
    own, test = own[own["label"].isin(shared)], test[test["label"].isin(shared)].copy()
    test["subject"] = protocol["test_dataset"] + "/" + test["subject"]
    fit, val = carve_validation(own, protocol["val_fraction"], seed,
                                by_subject=has_identities(own))
    yield 0, {"train": fit, "val": val, "test": test}


_BUILDERS = {"subject_kfold": _kfold, "image_kfold": _kfold, "loso": _loso,
             "predefined": _predefined, "held_out": _held_out, "balanced": _balanced,
             "cross_dataset": _cross_dataset}


def _usable(faces: pd.DataFrame, protocol: dict) -> pd.DataFrame:
    """Rows with a face, after the protocol's frame and class selection; `uid` = face index."""
    usable = faces[faces["face_index"] >= 0].copy()
    usable["uid"] = usable["face_index"].astype(int)
    usable = select_frames(usable, protocol["frames"])
    return restrict_classes(usable, protocol["class_set"])


def make_folds(faces: pd.DataFrame, protocol: dict, seed: int,
               test_faces: pd.DataFrame | None = None) -> pd.DataFrame:
    """The split table of a protocol over a face table (rows without a face are skipped).

    `test_faces` is the face table of a cross-dataset protocol's `test_dataset`. Every row
    also carries `identities` (whether the data names real people), so later stages can
    `describe` the protocol truthfully from this table alone.
    """
    if protocol["kind"] not in _BUILDERS:
        raise ValueError(f"unknown protocol kind {protocol['kind']!r}")
    if (protocol["kind"] == "cross_dataset") != (test_faces is not None):
        raise ValueError("the faces of a test dataset go with, and only with, cross_dataset")
    usable = _usable(faces, protocol).assign(_test_dataset=False)
    if test_faces is not None:
        usable = pd.concat([usable, _usable(test_faces, protocol).assign(_test_dataset=True)],
                           ignore_index=True)
    rows = []
    for fold, parts in _BUILDERS[protocol["kind"]](usable, protocol, seed):
        for role, samples in parts.items():
            part = samples[["uid", "label", "subject", "sequence"]].copy()
            part.insert(0, "fold", fold)
            part["role"] = role
            rows.append(part)
    table = pd.concat(rows, ignore_index=True)
    table = table.sort_values(["fold", "role", "uid"], kind="stable").reset_index(drop=True)
    table["identities"] = has_identities(usable)
    check_disjoint(table, "subject" if protocol["kind"] in SUBJECT_KINDS else "uid")
    return table


def check_disjoint(table: pd.DataFrame, key: str = "subject") -> None:
    """Raise LeakError if any `key` value appears in two roles of the same fold."""
    for fold, part in table.groupby("fold"):
        roles_per_key = part.groupby(key)["role"].nunique()
        leaked = roles_per_key[roles_per_key > 1]
        if not leaked.empty:
            raise LeakError(
                f"fold {fold}: {key} {leaked.index[0]!r} appears in several roles "
                f"({', '.join(sorted(part.loc[part[key] == leaked.index[0], 'role'].unique()))})"
            )


def describe(protocol: dict, identities: bool) -> tuple[str, bool]:
    """A human description of a protocol and whether it is subject-independent on data that
    does (`identities`) or does not name real people; the text says why when it is not."""
    kind = protocol["kind"]
    if kind == "cross_dataset":
        independent, verdict = identities, (
            "subject-independent as long as the two datasets share no people (CK+ and CK+48 "
            "do)" if identities else "NOT subject-independent: a dataset has no identities")
    elif kind in SUBJECT_KINDS and identities:
        independent, verdict = True, "subject-independent"
    elif kind in SUBJECT_KINDS:
        independent, verdict = False, ("NOT subject-independent: the data has no identities "
                                       "(each image counts as its own subject)")
    elif kind == "image_kfold":
        independent, verdict = False, ("NOT subject-independent: images are split ignoring "
                                       "identity, so one person's images reach training and test")
    else:
        reason = "keeps no subjects apart" if identities else "runs on data without identities"
        independent, verdict = False, f"NOT subject-independent: this split {reason}"
    return (f"{_what(protocol, identities)}, {protocol['class_set']} classes, "
            f"frames: {protocol['frames']}; {verdict}", independent)


def _what(protocol: dict, identities: bool) -> str:
    """The protocol-specific part of `describe`: how test and validation data are chosen."""
    kind = protocol["kind"]
    if kind == "balanced":
        counts = protocol["per_class"]
        return (f"balanced subset (seeded): {counts['train']} train + {counts['val']} val per "
                f"class from {', '.join(protocol['train_splits'])}, {counts['test']} test per "
                f"class from {', '.join(protocol['test_splits'])}")
    unit = "subjects" if identities and kind != "image_kfold" else "images"
    carved = f"validation {protocol['val_fraction']:.0%} of training {unit}"
    if kind == "subject_kfold":
        return f"{protocol['folds']}-fold stratified CV grouped by subject, {carved}"
    if kind == "image_kfold":
        return (f"{protocol['folds']}-fold stratified CV over images (the papers' leaky "
                f"protocol), {carved}")
    if kind == "loso":
        return f"leave-one-subject-out ({protocol['folds']} folds), {carved}"
    if kind == "cross_dataset":
        return (f"cross-dataset: train on the study's dataset, test on all of "
                f"{protocol['test_dataset']} (shared classes only), {carved}")
    if kind == "predefined":
        val = f"validation {', '.join(protocol['val'])}" if protocol["val"] else carved
        return (f"predefined split: train {', '.join(protocol['train'])}, {val}, "
                f"test {', '.join(protocol['test'])}")
    val = (f"validation subjects {', '.join(protocol['val_subjects'])}"
           if protocol["val_subjects"] else carved)
    return f"held-out subjects {', '.join(protocol['test_subjects'])}, {val}"
