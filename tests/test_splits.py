import numpy as np
import pandas as pd
import pytest

from ferbench import splits


def face_table(subjects=10, labels=("anger", "happiness", "sadness"), frames=4, seqs=2):
    rows = []
    for s in range(subjects):
        for label in labels:
            for q in range(seqs):
                for f in range(1, frames + 1):
                    rows.append({"image": f"s{s}/{label}{q}/{f}.png", "label": label,
                                 "subject": f"s{s:02d}", "sequence": f"{label}{q}", "frame": f})
    table = pd.DataFrame(rows)
    table["face_index"] = np.arange(len(table))
    return table


PROTOCOL = {"kind": "subject_kfold", "folds": 5, "val_fraction": 0.25, "class_set": "7",
            "frames": "last3_first_neutral"}


def test_no_subject_crosses_train_val_test():
    folds = splits.make_folds(face_table(), PROTOCOL, seed=0)
    for fold, part in folds.groupby("fold"):
        by_role = {r: set(part.loc[part.role == r, "subject"]) for r in splits.ROLES}
        assert not by_role["train"] & by_role["test"]
        assert not by_role["train"] & by_role["val"]
        assert not by_role["val"] & by_role["test"]
        assert all(by_role.values())


def test_every_sample_is_tested_exactly_once():
    folds = splits.make_folds(face_table(), PROTOCOL, seed=0)
    tested = folds[folds.role == "test"]["uid"]
    assert tested.is_unique
    assert set(tested) == set(folds["uid"])


def test_folds_are_deterministic_and_seed_dependent():
    a = splits.make_folds(face_table(), PROTOCOL, seed=0)
    b = splits.make_folds(face_table(), PROTOCOL, seed=0)
    c = splits.make_folds(face_table(), PROTOCOL, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)


def test_frame_selection_last3_first_neutral():
    table = face_table(subjects=1, labels=("anger",), frames=5, seqs=1)
    picked = splits.select_frames(table, "last3_first_neutral")
    assert sorted(picked["frame"]) == [1, 3, 4, 5]
    assert picked.set_index("frame").loc[1, "label"] == "neutral"
    assert set(picked.set_index("frame").loc[[3, 4, 5], "label"]) == {"anger"}
    assert list(splits.select_frames(table, "last")["frame"]) == [5]


def test_class_set_restricts_labels():
    table = face_table(labels=("anger", "contempt"))
    assert set(splits.restrict_classes(table, "7")["label"]) == {"anger"}
    assert set(splits.restrict_classes(table, "8")["label"]) == {"anger", "contempt"}


def test_leak_check_catches_a_shared_subject():
    folds = splits.make_folds(face_table(), PROTOCOL, seed=0)
    leaked = folds.copy()
    victim = leaked[(leaked.fold == 0) & (leaked.role == "test")].index[0]
    leaked.loc[victim, "subject"] = leaked[(leaked.fold == 0) & (leaked.role == "train")].iloc[0][
        "subject"]
    with pytest.raises(splits.LeakError, match="fold 0"):
        splits.check_disjoint(leaked)


def test_too_few_subjects_is_a_clear_error():
    with pytest.raises(ValueError, match="needs at least 5 subjects"):
        splits.make_folds(face_table(subjects=3), PROTOCOL, seed=0)
