"""Fold splitting: frame selection, class sets, subject-independent stratified k-fold.

The leak audit of SPEC.md starts here: a subject is in exactly one of train / val / test of
every fold, and `check_disjoint` proves it for any split table before it is written.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from ferbench.data.manifest import CLASS_SETS

ROLES = ("train", "val", "test")


class LeakError(AssertionError):
    """A split that lets a subject (or its images) reach both training and evaluation."""


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


def subject_kfold(samples: pd.DataFrame, folds: int, val_fraction: float, seed: int) -> pd.DataFrame:
    """Long split table: one row per (sample, fold) with role train/val/test.

    Test folds come from StratifiedGroupKFold grouped by subject; the validation subjects are
    carved out of each fold's training subjects the same way, so validation is also
    subject-independent.
    """
    subjects = samples["subject"].to_numpy()
    labels = samples["label"].to_numpy()
    if len(np.unique(subjects)) < folds:
        raise ValueError(
            f"{folds}-fold subject-independent split needs at least {folds} subjects, "
            f"found {len(np.unique(subjects))}"
        )
    outer = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    inner_splits = max(2, int(round(1.0 / val_fraction)))
    rows = []
    for fold, (train_idx, test_idx) in enumerate(outer.split(samples, labels, subjects)):
        inner = StratifiedGroupKFold(n_splits=inner_splits, shuffle=True, random_state=seed + fold)
        fit_idx, val_idx = next(inner.split(train_idx, labels[train_idx], subjects[train_idx]))
        for role, idx in (("train", train_idx[fit_idx]), ("val", train_idx[val_idx]),
                          ("test", test_idx)):
            part = samples.iloc[idx][["uid", "label", "subject", "sequence"]].copy()
            part.insert(0, "fold", fold)
            part["role"] = role
            rows.append(part)
    table = pd.concat(rows, ignore_index=True)
    table = table.sort_values(["fold", "role", "uid"], kind="stable").reset_index(drop=True)
    check_disjoint(table)
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


def make_folds(faces: pd.DataFrame, protocol: dict, seed: int) -> pd.DataFrame:
    """The split table of a protocol over a face table (rows without a face are skipped)."""
    usable = faces[faces["face_index"] >= 0].copy()
    usable["uid"] = usable["face_index"].astype(int)
    usable = select_frames(usable, protocol["frames"])
    usable = restrict_classes(usable, protocol["class_set"])
    if protocol["kind"] == "subject_kfold":
        return subject_kfold(usable, protocol["folds"], protocol["val_fraction"], seed)
    raise ValueError(f"unknown protocol kind {protocol['kind']!r}")


def describe(protocol: dict) -> tuple[str, bool]:
    """A human description of a protocol and whether it is subject-independent."""
    if protocol["kind"] == "subject_kfold":
        return (
            f"{protocol['folds']}-fold subject-independent stratified CV, "
            f"{protocol['class_set']} classes, frames: {protocol['frames']}, "
            f"validation {protocol['val_fraction']:.0%} of training subjects",
            True,
        )
    return protocol["kind"], False
