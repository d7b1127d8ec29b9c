import numpy as np
import pandas as pd

from ferbench.augment import GEOMETRY, IDENTITY, AugmentOptions, apply_geometry, augment_fold


def setup():
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, size=(6, 32, 32), dtype=np.uint8)
    folds = pd.DataFrame({"fold": 0, "uid": range(6), "label": "anger",
                          "subject": ["a", "a", "b", "b", "c", "c"],
                          "role": ["train", "train", "train", "train", "val", "test"]})
    return faces, folds


def test_only_training_faces_are_augmented():
    faces, folds = setup()
    array, table = augment_fold(faces, folds, 0, AugmentOptions(copies=2), seed=0)
    assert set(table["uid"]) == {0, 1, 2, 3}
    assert len(array) == len(table) == 4 * 3
    originals = table[table["copy"] == 0]
    for position, uid in zip(originals.index, originals["uid"]):
        assert np.array_equal(array[position], faces[uid])


def test_augmentation_is_deterministic_and_changes_pixels():
    faces, folds = setup()
    a, ta = augment_fold(faces, folds, 0, AugmentOptions(copies=2), seed=3)
    b, tb = augment_fold(faces, folds, 0, AugmentOptions(copies=2), seed=3)
    c, _ = augment_fold(faces, folds, 0, AugmentOptions(copies=2), seed=4)
    assert np.array_equal(a, b) and ta.equals(tb)
    assert not np.array_equal(a, c)
    copies = ta["copy"] > 0
    assert not np.array_equal(a[copies.to_numpy()], a[(ta["copy"] == 0).to_numpy()].repeat(2, 0))


def test_recorded_geometry_replays_each_copy_without_its_noise():
    """The table's geometry moves an aligned channel (an AU map) exactly as the face moved."""
    faces, folds = setup()
    noiseless = AugmentOptions(copies=3, noise_std=0.0, rotate_deg=10)
    array, table = augment_fold(faces, folds, 0, noiseless, seed=5)
    assert (table[list(GEOMETRY)].iloc[::4] == pd.Series(IDENTITY)).all(axis=None)
    moved = table["copy"] > 0
    assert table.loc[moved, "crop_side"].between(27, 32).all()  # 0.85-1.0 of 32 px
    for row, image in zip(table.to_dict("records"), array):
        assert np.array_equal(apply_geometry(faces[row["uid"]], row), image)
