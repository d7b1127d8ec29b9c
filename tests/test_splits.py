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


# -- the other protocol kinds ---------------------------------------------------------------

def image_table():
    """A table without identities, as FER2013's adapter writes it: subject = the image's id."""
    rows = []
    for split, count in {"Training": 20, "PublicTest": 6, "PrivateTest": 6}.items():
        for label in ("anger", "happiness", "sadness"):
            for n in range(count):
                image_id = f"{split}/{label}/{n:04d}"
                rows.append({"image": f"{image_id}.png", "label": label, "subject": image_id,
                             "sequence": image_id, "frame": 1, "source_split": split})
    table = pd.DataFrame(rows)
    table["face_index"] = np.arange(len(table))
    return table


def protocol(kind, **keys):
    return {"kind": kind, "class_set": "7", "frames": "all", **keys}


def members_by_role(folds, fold=0, key="subject"):
    part = folds[folds.fold == fold]
    return {r: set(part.loc[part.role == r, key]) for r in splits.ROLES}


def roles_are_disjoint(by_role):
    """No subject (or image, for key="uid") in two roles."""
    return not (by_role["train"] & by_role["test"] or by_role["train"] & by_role["val"]
                or by_role["val"] & by_role["test"])


IMAGE_KFOLD = protocol("image_kfold", folds=4, val_fraction=0.25)
LOSO = protocol("loso", folds=6, val_fraction=0.25)
PREDEFINED = protocol("predefined", train=["Training"], val=["PublicTest"], test=["PrivateTest"],
                      val_fraction=0.25)
HELD_OUT = protocol("held_out", test_subjects=["s04", "s05"], val_subjects=[], val_fraction=0.25)
BALANCED = protocol("balanced", per_class={"train": 8, "val": 2, "test": 4},
                    train_splits=["Training"], test_splits=["PublicTest", "PrivateTest"])


def test_image_kfold_tests_every_image_once_and_lets_subjects_cross():
    folds = splits.make_folds(face_table(subjects=6), IMAGE_KFOLD, seed=0)
    tested = folds[folds.role == "test"]["uid"]
    assert tested.is_unique and set(tested) == set(folds["uid"])
    for fold in range(4):
        assert roles_are_disjoint(members_by_role(folds, fold, key="uid"))
    assert not roles_are_disjoint(members_by_role(folds, 0))  # the leak it exists to show
    with pytest.raises(splits.LeakError):
        splits.check_disjoint(folds)


def test_loso_tests_each_subject_in_its_own_fold():
    folds = splits.make_folds(face_table(subjects=6), LOSO, seed=0)
    assert sorted(folds.fold.unique()) == list(range(6))
    for fold in range(6):
        by_role = members_by_role(folds, fold)
        assert by_role["test"] == {f"s{fold:02d}"}
        assert roles_are_disjoint(by_role) and by_role["val"]


def test_loso_fold_count_must_match_the_subjects():
    with pytest.raises(splits.ProtocolError, match="has 6 subjects; set folds: 6"):
        splits.make_folds(face_table(subjects=6), {**LOSO, "folds": 10}, seed=0)


def test_loso_mismatch_names_dataset_and_protocol(tmp_path):
    from ferbench import jobs

    faces = tmp_path / "jaffe" / "faces" / "faces.csv"
    faces.parent.mkdir(parents=True)
    face_table(subjects=6).to_csv(faces, index=False)
    with pytest.raises(splits.ProtocolError, match=r"^jaffe/loso: .*set folds: 6$"):
        jobs.make_folds(faces, {**LOSO, "folds": 10}, 0, tmp_path / "jaffe" / "loso" / "folds.csv")


def test_predefined_uses_the_datasets_own_splits():
    table = image_table()
    folds = splits.make_folds(table, PREDEFINED, seed=0)
    source = table.set_index("face_index")["source_split"]
    assert list(folds.fold.unique()) == [0]
    for role, split, size in (("train", "Training", 60), ("val", "PublicTest", 18),
                              ("test", "PrivateTest", 18)):
        uids = folds.loc[folds.role == role, "uid"]
        assert set(source[uids]) == {split} and len(uids) == size


def test_predefined_without_val_carves_stratified_images_from_training():
    folds = splits.make_folds(image_table(), {**PREDEFINED, "val": []}, seed=0)
    val = folds[folds.role == "val"]
    assert len(val) + (folds.role == "train").sum() == 60
    assert val.label.value_counts().to_dict() == {"anger": 5, "happiness": 5, "sadness": 5}
    assert roles_are_disjoint(members_by_role(folds, key="uid"))


def test_predefined_with_identities_carves_validation_by_subject():
    table = face_table(subjects=8)
    table["source_split"] = np.where(table.subject < "s06", "train", "test")
    folds = splits.make_folds(table, protocol("predefined", train=["train"], val=[],
                                              test=["test"], val_fraction=0.25), seed=0)
    by_role = members_by_role(folds)
    assert not by_role["train"] & by_role["val"] and len(by_role["val"]) == 2
    assert by_role["test"] == {"s06", "s07"}


@pytest.mark.parametrize("keys, message", [
    ({"test": ["Test"]}, r"test: source_split 'Test' is not in the data \(it has: "),
    ({"val": ["Training"]}, "source_split 'Training' is named for both train and val"),
])
def test_predefined_split_names_are_checked(keys, message):
    with pytest.raises(splits.ProtocolError, match=message):
        splits.make_folds(image_table(), {**PREDEFINED, **keys}, seed=0)


def test_held_out_tests_the_named_subjects_and_carves_validation_by_subject():
    folds = splits.make_folds(face_table(subjects=6), HELD_OUT, seed=0)
    by_role = members_by_role(folds)
    assert by_role["test"] == {"s04", "s05"}
    assert roles_are_disjoint(by_role) and len(by_role["val"]) == 1
    assert by_role["train"] | by_role["val"] == {"s00", "s01", "s02", "s03"}


def test_held_out_takes_named_validation_subjects():
    folds = splits.make_folds(face_table(subjects=6), {**HELD_OUT, "val_subjects": ["s00"]}, 0)
    assert members_by_role(folds) == {"train": {"s01", "s02", "s03"}, "val": {"s00"},
                                      "test": {"s04", "s05"}}


def test_held_out_unknown_subject_is_a_clear_error():
    with pytest.raises(splits.ProtocolError, match="test: subject 'mery' is not in the data"):
        splits.make_folds(face_table(subjects=6), {**HELD_OUT, "test_subjects": ["mery"]}, 0)


def test_balanced_draws_the_configured_images_per_class():
    table = image_table()
    folds = splits.make_folds(table, BALANCED, seed=0)
    source = table.set_index("face_index")["source_split"]
    for role, count in (("train", 8), ("val", 2), ("test", 4)):
        per_class = folds[folds.role == role].label.value_counts()
        assert len(per_class) == 3 and set(per_class) == {count}
    assert set(source[folds.loc[folds.role != "test", "uid"]]) == {"Training"}
    assert set(source[folds.loc[folds.role == "test", "uid"]]) <= {"PublicTest", "PrivateTest"}
    assert folds.uid.is_unique


def test_balanced_needs_enough_images_per_class():
    table = image_table()
    table = table.drop(table[(table.label == "sadness") & (table.source_split == "Training")]
                       .index[:12])
    with pytest.raises(splits.ProtocolError,
                       match="needs 10 images of class 'sadness' from Training .* has 8"):
        splits.make_folds(table, BALANCED, seed=0)


RANDOMISED = [("subject_kfold", face_table(), PROTOCOL),
              ("image_kfold", face_table(), IMAGE_KFOLD),
              ("loso", face_table(subjects=6), LOSO),
              ("predefined", image_table(), {**PREDEFINED, "val": []}),
              ("held_out", face_table(subjects=6), HELD_OUT),
              ("balanced", image_table(), BALANCED)]


@pytest.mark.parametrize("kind, table, proto", RANDOMISED, ids=[r[0] for r in RANDOMISED])
def test_every_kind_is_deterministic_and_seed_dependent(kind, table, proto):
    a = splits.make_folds(table, proto, seed=0)
    pd.testing.assert_frame_equal(a, splits.make_folds(table, proto, seed=0))
    assert not a.equals(splits.make_folds(table, proto, seed=1))


def test_predefined_with_named_splits_ignores_the_seed():
    a = splits.make_folds(image_table(), PREDEFINED, seed=0)
    pd.testing.assert_frame_equal(a, splits.make_folds(image_table(), PREDEFINED, seed=1))


@pytest.mark.parametrize("proto, count", [(PROTOCOL, 5), (IMAGE_KFOLD, 4), (LOSO, 6),
                                          (PREDEFINED, 1), (HELD_OUT, 1), (BALANCED, 1)])
def test_fold_count(proto, count):
    assert splits.fold_count(proto) == count


def test_has_identities():
    assert splits.has_identities(face_table())
    assert not splits.has_identities(image_table())
    pixel_rows = pd.DataFrame({"image": ["fer2013.csv#0", "fer2013.csv#1"],
                               "subject": ["fer2013.csv#0", "fer2013.csv#1"]})
    assert not splits.has_identities(pixel_rows)


def test_fold_table_records_identities():
    assert splits.make_folds(face_table(), PROTOCOL, seed=0)["identities"].all()
    assert not splits.make_folds(image_table(), PREDEFINED, seed=0)["identities"].any()


@pytest.mark.parametrize("proto", [PROTOCOL, IMAGE_KFOLD, LOSO, PREDEFINED, HELD_OUT, BALANCED],
                         ids=lambda p: p["kind"])
@pytest.mark.parametrize("identities", [True, False])
def test_describe_flags_subject_independence(proto, identities):
    text, independent = splits.describe(proto, identities)
    assert independent == (identities and proto["kind"] in ("subject_kfold", "loso", "held_out"))
    assert text.endswith("; subject-independent") == independent
    if not independent:
        assert "NOT subject-independent: " in text
    if proto["kind"] in splits.SUBJECT_KINDS and not identities:
        assert "the data has no identities" in text


# -- cross-dataset -----------------------------------------------------------------------------

CROSS = protocol("cross_dataset", test_dataset="jaffe", val_fraction=0.25)


def test_cross_dataset_trains_on_one_and_tests_on_all_of_the_other(tmp_path):
    from ferbench import jobs

    own = face_table(subjects=6, labels=("anger", "happiness", "sadness"))
    other = face_table(subjects=3, labels=("happiness", "sadness", "surprise"))  # s00..s02 too
    paths = {}
    for name, table in (("own", own), ("jaffe", other)):
        paths[name] = tmp_path / f"{name}.csv"
        table.to_csv(paths[name], index=False)
    folds = jobs.make_folds(paths["own"], CROSS, 0, tmp_path / "own" / "cross" / "folds.csv",
                            paths["jaffe"])
    by_role = members_by_role(folds)
    assert roles_are_disjoint(by_role)  # equal subject ids of two datasets are told apart
    assert by_role["test"] == {"jaffe/s00", "jaffe/s01", "jaffe/s02"}
    assert set(folds["label"]) == {"happiness", "sadness"}  # classes both datasets have
    tested = folds[folds.role == "test"]
    expected = other[other.label.isin(["happiness", "sadness"])]["face_index"]
    assert sorted(tested["uid"]) == sorted(expected)  # uids index the test dataset's faces
    assert splits.describe(CROSS, True)[1] is True
    assert "CK+48" in splits.describe(CROSS, True)[0]  # the caveat about shared people


def test_cross_dataset_without_a_shared_class_is_a_clear_error():
    with pytest.raises(splits.ProtocolError, match="share no class"):
        splits.make_folds(face_table(labels=("anger",)), CROSS, 0,
                          face_table(labels=("surprise",)))


def test_test_faces_belong_to_cross_dataset_only():
    with pytest.raises(ValueError, match="only with, cross_dataset"):
        splits.make_folds(face_table(), LOSO, 0, face_table())


def augment_table(subjects=6, faces=4, copies=2):
    """A fold's training faces as the augment stage lists them: each face, then its copies."""
    rows = [{"uid": s * faces + f, "label": ("anger", "happiness")[f % 2], "subject": f"S{s}",
             "copy": c} for s in range(subjects) for f in range(faces) for c in range(copies + 1)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("n_splits", [3, 6, 40])
def test_subject_folds_keep_subjects_apart_and_score_each_original_once(n_splits):
    table = augment_table()
    folds = splits.subject_folds(table, n_splits, seed=0)
    assert len(folds) == min(n_splits, 6)  # one subject per fold at most: LOSO
    scored = np.concatenate([s for _, s in folds])
    assert sorted(scored) == list(np.flatnonzero(table["copy"] == 0))  # each face once
    for fitted, held in folds:
        assert set(table["subject"].iloc[fitted]).isdisjoint(table["subject"].iloc[held])
        # every row of the fold's other subjects is fitted, augmented copies included
        assert len(fitted) + len(held) * 3 == len(table)
    assert all((a[0] == b[0]).all() and (a[1] == b[1]).all()
               for a, b in zip(folds, splits.subject_folds(table, n_splits, seed=0)))


def test_subject_folds_need_two_subjects():
    with pytest.raises(splits.ProtocolError, match="at least 2 training subjects, found 1"):
        splits.subject_folds(augment_table(subjects=1), 5, seed=0)
