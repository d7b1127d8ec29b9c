"""Dataset adapters on small fixture trees in the datasets' native layouts (DATASETS.md)."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ferbench.data import adapters, images, synthetic
from ferbench.data.manifest import counts

_SHADES = itertools.count(1)
JAFFE = {"AN": "anger", "DI": "disgust", "FE": "fear", "HA": "happiness", "NE": "neutral",
         "SA": "sadness", "SU": "surprise"}


def _image(path: Path) -> Path:
    """A tiny PNG/TIFF whose pixels differ from every other fixture image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((8, 8), next(_SHADES) % 256, np.uint8))
    return path


def _tree(root: Path, files: list[str]) -> Path:
    for name in files:
        _image(root / name)
    return root


def _reasons(ingest: adapters.Ingest) -> dict[str, str]:
    return dict(zip(ingest.quarantine["image"], ingest.quarantine["reason"]))


def test_class_folders_map_common_names_case_insensitively(tmp_path):
    root = _tree(tmp_path, ["angry/a1.png", "angry/a2.jpg", "Angry2/x.png", "Happy/h1.png",
                            "happy/h2.png", "Neutral/n1.bmp", "sad/s1.tiff"])
    (root / "README.txt").write_text("not an image")
    (root / "__MACOSX" / "angry").mkdir(parents=True)
    (root / "__MACOSX" / "angry" / "._a1.png").write_bytes(b"resource fork")
    result = adapters.load("folder", root)
    assert counts(result.manifest) == {
        "images": 6, "subjects": 6, "sequences": 6,
        "per_class": {"anger": 2, "happiness": 2, "neutral": 1, "sadness": 1},
        "per_split": {"all": 6}}
    assert _reasons(result) == {"Angry2/x.png": "unknown label 'Angry2'"}
    row = result.manifest.set_index("image").loc["Happy/h1.png"]
    assert (row["subject"], row["sequence"], row["frame"]) == ("Happy/h1", "Happy/h1", 1)


def test_label_map_adds_names_and_rejects_non_canonical_targets(tmp_path):
    root = _tree(tmp_path, ["Angry2/x.png", "joy/y.png"])
    result = adapters.load("folder", root, label_map={"ANGRY2": "anger"})
    assert counts(result.manifest)["per_class"] == {"anger": 1, "happiness": 1}
    with pytest.raises(ValueError, match="not one of"):
        adapters.load("folder", root, label_map={"Angry2": "rage"})


def test_flat_jaffe_folder_with_pattern(tmp_path):
    root = _tree(tmp_path / "jaffe", ["KA.AN1.39.tiff", "KA.HA1.29.tiff", "KA.NE2.27.tif",
                                      "NM.AN2.105.tiff", "NM.SU1.150.tiff", "scan.tiff"])
    (root / "README").write_text("JAFFE")
    result = adapters.load("folder", tmp_path, label_map=JAFFE,
                           pattern=r"(?P<subject>[A-Z]{2})\.(?P<label>[A-Z]{2})\d+\.(?P<frame>\d+)")
    assert counts(result.manifest) == {
        "images": 5, "subjects": 2, "sequences": 5,
        "per_class": {"anger": 2, "happiness": 1, "neutral": 1, "surprise": 1},
        "per_split": {"all": 5}}
    assert _reasons(result) == {"jaffe/scan.tiff": "name does not match pattern"}
    row = result.manifest.set_index("image").loc["jaffe/NM.AN2.105.tiff"]
    assert (row["label"], row["subject"], row["frame"]) == ("anger", "NM", 105)


def test_ck48_class_folders_with_ids_from_the_file_name(tmp_path):
    names = [f"{label}/S{subject:03d}_{seq:03d}_{frame:08d}.png"
             for label, subject, seq in (("anger", 10, 4), ("happy", 10, 6), ("anger", 11, 2))
             for frame in (15, 16, 17)]
    root = _tree(tmp_path / "CK+48", names)
    result = adapters.load("folder", root,
                           pattern=r"(?P<subject>S\d+)_(?P<sequence>\d+)_(?P<frame>\d+)")
    assert counts(result.manifest) == {
        "images": 9, "subjects": 2, "sequences": 3,
        "per_class": {"anger": 6, "happiness": 3}, "per_split": {"all": 9}}
    assert sorted(result.manifest["frame"].unique()) == [15, 16, 17]
    assert len(result.quarantine) == 0


def test_split_folders_become_the_source_split(tmp_path):
    # per-class counters (im0.png in several classes) are different images, not duplicates
    root = _tree(tmp_path, ["train/angry/im0.png", "train/angry/im1.png", "train/happy/im0.png",
                            "test/angry/im0.png", "test/happy/im0.png", "test/happy/im1.png",
                            "Val/sad/im0.png"])
    result = adapters.load("folder", root)
    assert counts(result.manifest) == {
        "images": 7, "subjects": 7, "sequences": 7,
        "per_class": {"anger": 3, "happiness": 3, "sadness": 1},
        "per_split": {"test": 3, "train": 3, "val": 1}}
    assert len(result.quarantine) == 0
    unsplit = adapters.load("folder", root, split_folders=False)
    assert counts(unsplit.manifest)["per_split"] == {"all": 7}


def test_duplicates_across_classes_and_empty_files_are_quarantined(tmp_path):
    root = _tree(tmp_path, ["anger/S010_004_00000017.png", "anger/S011_001_00000009.png",
                            "fear/f.png"])
    (root / "disgust").mkdir()
    shutil.copy(root / "anger/S010_004_00000017.png", root / "disgust")
    (root / "fear" / "broken.png").write_bytes(b"")
    result = adapters.load("folder", root)
    assert counts(result.manifest)["per_class"] == {"anger": 1, "fear": 1}
    assert _reasons(result) == {
        "anger/S010_004_00000017.png": "same file in several classes",
        "disgust/S010_004_00000017.png": "same file in several classes",
        "fear/broken.png": "empty file"}


def test_truncated_images_are_quarantined_with_the_reason(tmp_path):
    """A JPEG cut short decodes in OpenCV without complaint, its lower part filled grey,
    so it would enter the study as a face; ingest decodes each file once and refuses it."""
    face = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (96, 96), np.uint8),
                            (9, 9), 3)
    (tmp_path / "happy").mkdir()
    for name in ("whole.jpg", "whole.png"):
        assert cv2.imwrite(str(tmp_path / "happy" / name), face)
        data = (tmp_path / "happy" / name).read_bytes()
        (tmp_path / "happy" / f"cut{Path(name).suffix}").write_bytes(data[:len(data) * 6 // 10])
    decoded = cv2.imread(str(tmp_path / "happy" / "cut.jpg"), cv2.IMREAD_GRAYSCALE)
    assert decoded.shape == face.shape and (decoded[-8:] == 128).all()  # the grey half
    result = adapters.load("folder", tmp_path)
    assert sorted(result.manifest["image"]) == ["happy/whole.jpg", "happy/whole.png"]
    reasons = _reasons(result)
    assert sorted(reasons) == ["happy/cut.jpg", "happy/cut.png"]
    assert all(r.startswith("undecodable image: image file is truncated")
               for r in reasons.values()), reasons


def test_csv_with_label_codes_columns_map_and_missing_files(tmp_path):
    _tree(tmp_path, ["img/0.png", "img/1.png", "img/2.png", "img/3.png", "img/5.png"])
    pd.DataFrame({
        "file": ["img/0.png", "img/1.png", "img/2.png", "img/3.png", "img/4.png", "img/5.png"],
        "emotion": ["3", "6", "3.0", "0", "3", "9"],
        "person": ["p1", "p1", "p2", "p2", "p3", "p3"],
        "Usage": ["Training", "Training", "PublicTest", "PublicTest", "Training", "Training"],
        "gender": ["f", "f", "m", "m", "m", "m"],
    }).to_csv(tmp_path / "table.csv", index=False)
    fer = {0: "anger", 1: "disgust", 2: "fear", 3: "happiness", 4: "sadness", 5: "surprise",
           6: "neutral"}
    result = adapters.load("csv", tmp_path, table="table.csv", label_map=fer,
                           columns={"image": "file", "label": "emotion", "subject": "person",
                                    "source_split": "Usage"})
    assert counts(result.manifest) == {
        "images": 4, "subjects": 2, "sequences": 4,
        "per_class": {"anger": 1, "happiness": 2, "neutral": 1},
        "per_split": {"PublicTest": 2, "Training": 2}}
    assert list(result.manifest["gender"]) == ["f", "f", "m", "m"]
    assert _reasons(result) == {"img/4.png": "missing file", "img/5.png": "unknown label '9'"}


def test_csv_without_the_mapped_columns_says_which(tmp_path):
    pd.DataFrame({"path": ["a.png"], "emotion": ["happy"]}).to_csv(tmp_path / "labels.csv",
                                                                   index=False)
    with pytest.raises(ValueError, match="no column image, label .*`columns` option"):
        adapters.load("csv", tmp_path)


def test_synthetic_layout_quarantines_listed_but_missing_images(tmp_path):
    table = synthetic.generate(tmp_path, identities=2, repetitions=1, frames=3,
                               frame_size=(96, 96), progress=False)
    table.to_csv(tmp_path / "manifest.csv", index=False)
    (tmp_path / table["image"][0]).unlink()
    result = adapters.load("synthetic", tmp_path)
    assert counts(result.manifest) == {
        "images": 35, "subjects": 2, "sequences": 12,
        "per_class": {label: 6 - (label == "anger") for label in synthetic.EXPRESSIONS},
        "per_split": {"all": 35}}
    assert list(result.manifest.columns[-3:]) == ["gt_bbox", "gender", "landmarks"]
    assert _reasons(result) == {table["image"][0]: "missing file"}
    assert adapters.load("synthetic", tmp_path).manifest.equals(result.manifest)


@pytest.mark.parametrize("name", sorted(adapters.ADAPTERS))
def test_missing_root_names_the_layout_and_where_to_get_it(tmp_path, name):
    with pytest.raises(adapters.DatasetNotFoundError) as err:
        adapters.load(name, tmp_path / "nowhere", obtain="https://example.org/request-form")
    message = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert adapters.ADAPTERS[name].LAYOUT in message
    assert "https://example.org/request-form" in message and "nowhere" in message
    assert "\n" not in message


def test_a_root_without_its_table_or_images_is_not_found(tmp_path):
    with pytest.raises(adapters.DatasetNotFoundError, match="labels.csv does not exist"):
        adapters.load("csv", tmp_path)
    with pytest.raises(adapters.DatasetNotFoundError, match="holds no images"):
        adapters.load("folder", tmp_path)


def test_unknown_adapter_and_option_list_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="known: ckplus, ckplus48, csv, fer2013, ferg, folder, "
                                         "jaffe, oulu_casia, rafdb, sfew, synthetic"):
        adapters.load("ckplus-typo", tmp_path)
    with pytest.raises(ValueError, match="no option patern; options: pattern"):
        adapters.load("folder", tmp_path, patern="x")
    with pytest.raises(ValueError, match="pattern group"):
        adapters.load("folder", _tree(tmp_path, ["a/x.png"]), pattern=r"(?P<person>\w+)")


def test_class_folders_of_gif_webp_and_16_bit_images_ingest_and_decode(tmp_path):
    """Every suffix `ferbench live` reads is a dataset image too, decoded to the same grey."""
    grey = (np.arange(32 * 32).reshape(32, 32) % 251).astype(np.uint8)
    root = tmp_path / "data"
    for folder in ("happy", "sad", "angry"):
        (root / folder).mkdir(parents=True)
    Image.fromarray(grey).save(root / "happy" / "h.gif")
    Image.fromarray(grey).save(root / "angry" / "a.webp", lossless=True)
    assert cv2.imwrite(str(root / "sad" / "s.png"), grey.astype(np.uint16) * 257)
    result = adapters.load("folder", root)
    assert sorted(result.manifest["image"]) == ["angry/a.webp", "happy/h.gif", "sad/s.png"]
    for image in result.manifest["image"]:
        decoded = images.read_image(root, image)
        np.testing.assert_array_equal(decoded[..., 0], grey)
