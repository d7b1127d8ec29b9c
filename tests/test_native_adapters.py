"""The dataset-specific adapters on fixture trees built in each dataset's exact native layout
(DATASETS.md), with tiny synthetic pixels and deliberately broken entries."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ferbench import faces
from ferbench.data import adapters, native
from ferbench.data.images import TABLE_FACE_PIXELS, read_image
from ferbench.data.manifest import counts
from tests.test_adapters import _image, _reasons, _tree

FERBENCH = str(Path(sys.executable).parent / "ferbench")
NATIVE = sorted(name for name, reader in adapters.ADAPTERS.items()
                if reader.__module__ == native.__name__)


def _cli_counts(adapter: str, root: Path) -> tuple[str, dict[str, str]]:
    """`ferbench manifest` run as a user runs it: its summary line and the indented counts."""
    result = subprocess.run([FERBENCH, "manifest", adapter, str(root)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    return lines[0], dict(line.split() for line in lines
                          if line.startswith("  ") and len(line.split()) == 2)


# -- FER2013 ------------------------------------------------------------------------------


def _pixels(seed: int, count: int = TABLE_FACE_PIXELS) -> str:
    return " ".join(map(str, np.random.default_rng(seed).integers(0, 256, count)))


def _fer2013_csv(folder: Path) -> Path:
    """The original table: four good faces, an unknown code and two malformed pixel strings."""
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({
        "emotion": ["0", "3", "3", "6", "7", "2", "4"],
        "pixels": [_pixels(0), _pixels(1), _pixels(2), _pixels(3), _pixels(4),
                   _pixels(5, TABLE_FACE_PIXELS - 1), _pixels(6).replace("0", "300", 1)],
        "Usage": ["Training", "Training", "PublicTest", "PrivateTest", "Training",
                  "PublicTest", "Training"],
    }).to_csv(folder / "fer2013.csv", index=False)
    return folder / "fer2013.csv"


FER2013_CSV_COUNTS = {
    "images": 4, "subjects": 4, "sequences": 4,
    "per_class": {"anger": 1, "happiness": 2, "neutral": 1},
    "per_split": {"PrivateTest": 1, "PublicTest": 1, "Training": 2}}


def test_fer2013_csv_rows_become_row_images_of_their_own_subject(tmp_path):
    _fer2013_csv(tmp_path)
    result = adapters.load("fer2013", tmp_path)
    assert counts(result.manifest) == FER2013_CSV_COUNTS
    row = result.manifest.set_index("image").loc["fer2013.csv#1"]
    assert (row["label"], row["subject"], row["source_split"]) == (
        "happiness", "fer2013.csv#1", "Training")
    assert _reasons(result) == {
        "fer2013.csv#4": "unknown FER2013 emotion code '7'",
        "fer2013.csv#5": "malformed pixels: 2303 pixel values, expected 2304",
        "fer2013.csv#6": "malformed pixels: pixel values outside 0-255"}


def test_fer2013_csv_inside_the_archive_folder(tmp_path):
    _fer2013_csv(tmp_path / "fer2013")
    (tmp_path / "fer2013" / "README").write_text("FER2013")
    result = adapters.load("fer2013", tmp_path)
    assert counts(result.manifest) == FER2013_CSV_COUNTS
    assert result.manifest["image"].iloc[0] == "fer2013/fer2013.csv#0"


def test_read_image_decodes_a_table_row_and_refuses_a_corrupt_one(tmp_path):
    table = _fer2013_csv(tmp_path)
    image = read_image(tmp_path, "fer2013.csv#1")
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8
    expected = np.array(_pixels(1).split(), dtype=np.uint8).reshape(48, 48)
    assert (image[..., 0] == expected).all() and (image[..., 2] == expected).all()
    assert read_image(tmp_path, "fer2013.csv#5") is None      # 2303 values
    assert read_image(tmp_path, "fer2013.csv#99") is None     # past the last row
    assert read_image(tmp_path, "absent.csv#0") is None
    _image(tmp_path / "face.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert read_image(tmp_path, "face.png").shape == (8, 8, 3)
    assert read_image(tmp_path, "broken.png") is None
    # a table replaced on disk is read again, not served from the cache
    frame = pd.read_csv(table, dtype=str)
    frame.loc[5, "pixels"] = _pixels(7)
    frame.to_csv(table, index=False)
    assert read_image(tmp_path, "fer2013.csv#5") is not None


def test_the_face_stage_decodes_table_rows(tmp_path):
    _fer2013_csv(tmp_path)
    manifest = adapters.load("fer2013", tmp_path).manifest
    options = faces.FaceOptions(detector="none", size=48, normalise="none", align=False)
    array, table, _ = faces.extract_faces(manifest, tmp_path, options, progress=False)
    assert list(table["outcome"]) == ["full-image"] * 4 and array.shape == (4, 48, 48)
    expected = np.array(_pixels(1).split(), dtype=np.uint8).reshape(48, 48)
    assert (array[list(table["image"]).index("fer2013.csv#1")] == expected).all()


def test_table_rows_parsed_in_chunks_match_the_row_by_row_parser(tmp_path, monkeypatch):
    """Rows parsed a chunk at a time get what `parse_pixels` gives each, malformed rows
    included, and a table read in chunks gives each row its own face."""
    from ferbench.data import images

    texts = [_pixels(0), _pixels(1, TABLE_FACE_PIXELS + 1), _pixels(2).replace("5", "2.5", 1),
             _pixels(3).replace("1", "-1", 1), _pixels(4)]
    faces_, problems = images.parse_pixel_rows(texts)
    for text, face, problem in zip(texts, faces_, problems):
        try:
            expected = images.parse_pixels(text)
        except ValueError as malformed:
            assert problem == str(malformed) and not face.any()
        else:
            assert problem is None and (face == expected).all()
    assert [p is None for p in problems] == [True, False, False, False, True]
    monkeypatch.setattr(images, "TABLE_CHUNK_ROWS", 3)
    table = _fer2013_csv(tmp_path)
    assert images.read_image(tmp_path, "fer2013.csv#7") is None  # past the end
    for row in (1, 3):  # chunks 0 and 1
        expected = np.array(_pixels(row).split(), dtype=np.uint8).reshape(48, 48)
        assert (read_image(tmp_path, f"fer2013.csv#{row}")[..., 0] == expected).all()
    assert read_image(tmp_path, "fer2013.csv#5") is None and table.is_file()
    assert adapters.load("fer2013", tmp_path).quarantine["reason"].tolist() == [
        "unknown FER2013 emotion code '7'", "malformed pixels: 2303 pixel values, expected 2304",
        "malformed pixels: pixel values outside 0-255"]


def test_fer2013_folder_form_keeps_the_usage_in_file_names(tmp_path):
    root = _tree(tmp_path, [
        "train/angry/Training_1.jpg", "train/happy/Training_2.jpg", "train/happy/Training_3.jpg",
        "test/angry/PublicTest_4.jpg", "test/sad/PrivateTest_5.jpg", "test/neutral/im0.jpg",
        "train/contempt/Training_6.jpg", "stray.jpg"])
    (root / "train" / "happy" / "Training_7.jpg").write_bytes(b"")
    (root / "README.txt").write_text("not an image")
    result = adapters.load("fer2013", root)
    assert counts(result.manifest) == {
        "images": 6, "subjects": 6, "sequences": 6,
        "per_class": {"anger": 2, "happiness": 2, "neutral": 1, "sadness": 1},
        "per_split": {"PrivateTest": 1, "PublicTest": 1, "Training": 3, "test": 1}}
    assert _reasons(result) == {
        "stray.jpg": "not in a <split>/<class>/ folder",
        "train/contempt/Training_6.jpg": "unknown FER2013 class folder 'contempt'",
        "train/happy/Training_7.jpg": "empty file"}


# -- CK+ ----------------------------------------------------------------------------------


def _ckplus_points(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 640, (68, 2)).round(3)


def _ckplus(root: Path, emotion_folder: str = "Emotion") -> Path:
    """CK+ as its zips unpack: images, Emotion, Landmarks, FACS side by side.

    S005/001 disgust (3 frames, landmarks, FACS), S010/002 happiness (4 frames, one landmark
    file malformed), S010/003 unlabelled, S011/001 labelled with an unknown code, S011/002
    surprise whose emotion file names a peak frame that is missing.
    """
    sequences = {("S005", "001"): (3, "3"), ("S010", "002"): (4, "5"), ("S010", "003"): (2, None),
                 ("S011", "001"): (2, "9"), ("S011", "002"): (2, "7")}
    for (subject, sequence), (frames, code) in sequences.items():
        for frame in range(1, frames + 1):
            _image(root / "cohn-kanade-images" / subject / sequence
                   / f"{subject}_{sequence}_{frame:08d}.png")
        emotion_dir = root / emotion_folder / subject / sequence
        emotion_dir.mkdir(parents=True)
        if code:
            missing_peak = (subject, sequence) == ("S011", "002")
            peak = frames + 1 if missing_peak else frames
            (emotion_dir / f"{subject}_{sequence}_{peak:08d}_emotion.txt").write_text(
                f"   {float(code):.7e}\n")
    for frame in (1, 2, 3):
        points = _ckplus_points(frame)
        path = root / "Landmarks/S005/001" / f"S005_001_{frame:08d}_landmarks.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"   {x:.7e}   {y:.7e}\n" for x, y in points))
    malformed = root / "Landmarks/S010/002/S010_002_00000001_landmarks.txt"
    malformed.parent.mkdir(parents=True)
    malformed.write_text("   1.0e+02   2.0e+02\n" * 67)
    facs = root / "FACS/S005/001/S005_001_00000003_facs.txt"
    facs.parent.mkdir(parents=True)
    facs.write_text("   1.0000000e+00   0.0000000e+00\n   2.0000000e+00   0.0000000e+00\n"
                    "   5.0000000e+00   3.0000000e+00\n")
    (root / "cohn-kanade-images/S005/001/.DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "cohn-kanade-images/S005/001/Thumbs.db").write_bytes(b"\0")
    return root


CKPLUS_COUNTS = {"images": 9, "subjects": 3, "sequences": 3,
                 "per_class": {"disgust": 3, "happiness": 4, "surprise": 2},
                 "per_split": {"all": 9}}


def test_ckplus_lists_every_frame_of_labelled_sequences_with_landmarks_and_facs(tmp_path):
    root = _ckplus(tmp_path)
    result = adapters.load("ckplus", root)
    assert counts(result.manifest) == CKPLUS_COUNTS
    assert _reasons(result) == {
        "cohn-kanade-images/S011/001/S011_001_00000001.png":
            "unknown CK+ emotion code '9.0000000e+00'",
        "cohn-kanade-images/S011/001/S011_001_00000002.png":
            "unknown CK+ emotion code '9.0000000e+00'",
        "cohn-kanade-images/S011/002/S011_002_00000003.png": "missing file"}
    table = result.manifest.set_index("image")
    first = table.loc["cohn-kanade-images/S005/001/S005_001_00000001.png"]
    assert (first["label"], first["subject"], first["sequence"], first["frame"],
            first["facs"]) == ("disgust", "S005", "001", 1, "1+2+5")
    points = np.array(first["landmarks"].split(), dtype=float).reshape(68, 2)
    assert np.allclose(points, _ckplus_points(1))
    s010 = table[table["subject"] == "S010"]
    assert list(s010["frame"]) == [1, 2, 3, 4] and set(s010["landmarks"]) == {""}
    assert set(s010["facs"]) == {""}


def test_ckplus_root_may_be_one_level_above_and_labels_unpacked_apart(tmp_path):
    _ckplus(tmp_path / "CK+", emotion_folder="Emotion_labels/Emotion")
    result = adapters.load("ckplus", tmp_path / "CK+")
    assert counts(result.manifest) == CKPLUS_COUNTS
    above = adapters.load("ckplus", tmp_path)
    assert counts(above.manifest) == CKPLUS_COUNTS
    assert above.manifest["image"].str.startswith("CK+/cohn-kanade-images/").all()


def test_ckplus_without_emotion_labels_is_not_found(tmp_path):
    _image(tmp_path / "cohn-kanade-images/S005/001/S005_001_00000001.png")
    with pytest.raises(adapters.DatasetNotFoundError, match="Emotion does not exist"):
        adapters.load("ckplus", tmp_path)


def test_ckplus48_ids_from_file_names_and_duplicates_across_classes(tmp_path):
    names = [f"{label}/S{subject:03d}_{sequence:03d}_{frame:08d}.png"
             for label, subject, sequence in (("anger", 10, 4), ("happy", 10, 6),
                                              ("contempt", 11, 2))
             for frame in (15, 16, 17)]
    root = _tree(tmp_path / "CK+48", [*names, "neutral/S012_001_00000001.png",
                                      "anger/IMG_0001.png"])
    (root / "surprise").mkdir()
    shutil.copy(root / "happy/S010_006_00000017.png", root / "surprise")
    expected = {"images": 8, "subjects": 2, "sequences": 3,
                "per_class": {"anger": 3, "contempt": 3, "happiness": 2},
                "per_split": {"all": 8}}
    for given in (root, tmp_path):
        result = adapters.load("ckplus48", given)
        assert counts(result.manifest) == expected
        prefix = "" if given == root else "CK+48/"
        assert _reasons(result) == {
            f"{prefix}anger/IMG_0001.png": "name is not S<subject>_<sequence>_<frame>",
            f"{prefix}happy/S010_006_00000017.png": "same file in several classes",
            f"{prefix}neutral/S012_001_00000001.png": "unknown CK+48 class folder 'neutral'",
            f"{prefix}surprise/S010_006_00000017.png": "same file in several classes"}
    assert sorted(result.manifest["frame"].unique()) == [15, 16, 17]


# -- JAFFE, FERG --------------------------------------------------------------------------


def test_jaffe_names_carry_subject_and_expression(tmp_path):
    _tree(tmp_path / "jaffe", ["KA.AN1.39.tiff", "KA.HA1.29.tiff", "KA.NE2.27.tif",
                               "NM.AN2.105.tiff", "NM.SU1.150.tiff", "NM.XX1.12.tiff",
                               "scan.tiff"])
    (tmp_path / "jaffe" / "README").write_text("JAFFE")
    result = adapters.load("jaffe", tmp_path)
    assert counts(result.manifest) == {
        "images": 5, "subjects": 2, "sequences": 5,
        "per_class": {"anger": 2, "happiness": 1, "neutral": 1, "surprise": 1},
        "per_split": {"all": 5}}
    assert _reasons(result) == {
        "jaffe/NM.XX1.12.tiff": "unknown JAFFE expression code 'XX'",
        "jaffe/scan.tiff": "name is not <subject>.<expression><n>.<id>"}
    row = result.manifest.set_index("image").loc["jaffe/NM.AN2.105.tiff"]
    assert (row["subject"], row["sequence"]) == ("NM", "jaffe/NM.AN2.105")


def test_ferg_characters_are_subjects_with_their_gender(tmp_path):
    base = _tree(tmp_path / "FERG_DB_256", [
        "aia/aia_joy/aia_joy_1.png", "aia/aia_joy/aia_joy_2.png", "aia/aia_anger/aia_anger_1.png",
        "ray/ray_sadness/ray_sadness_1.png", "ray/ray_neutral/ray_neutral_7.png",
        "mery/mery_fear/mery_fear_3.png", "bob/bob_joy/bob_joy_1.png",
        "aia/aia_smile/aia_smile_1.png", "aia/stray.png"])
    expected = {"images": 6, "subjects": 3, "sequences": 6,
                "per_class": {"anger": 1, "fear": 1, "happiness": 2, "neutral": 1,
                              "sadness": 1},
                "per_split": {"all": 6}}
    for given, prefix in ((tmp_path, "FERG_DB_256/"), (base, "")):
        result = adapters.load("ferg", given)
        assert counts(result.manifest) == expected
        assert _reasons(result) == {
            f"{prefix}aia/aia_smile/aia_smile_1.png": "unknown FERG expression 'smile'",
            f"{prefix}aia/stray.png": "not in <character>/<character>_<expression>/",
            f"{prefix}bob/bob_joy/bob_joy_1.png": "unknown FERG character 'bob'"}
    genders = result.manifest.groupby("subject")["gender"].agg(set).to_dict()
    assert genders == {"aia": {"f"}, "mery": {"f"}, "ray": {"m"}}


# -- RAF-DB -------------------------------------------------------------------------------


def _rafdb(root: Path) -> Path:
    basic = root / "basic"
    (basic / "EmoLabel").mkdir(parents=True)
    (basic / "EmoLabel/list_patition_label.txt").write_text(
        "train_00001.jpg 5\ntrain_00002.jpg 4\ntrain_00003.jpg 1\ntest_0001.jpg 7\n"
        "test_0002.jpg 8\ntrain_00004.jpg 2\ngarbage\n\n")
    _tree(basic / "Image/aligned", [f"{stem}_aligned.jpg" for stem in (
        "train_00001", "train_00002", "train_00003", "test_0001", "test_0002")])
    _tree(basic / "Image/original", ["train_00001.jpg", "test_0001.jpg"])
    landmarks = "".join(f"{30 + i}.5 {40 + i}.25\n" for i in range(5))
    (basic / "Annotation/manual").mkdir(parents=True)
    for stem, gender in (("train_00001", 1), ("train_00002", 0), ("test_0001", 2)):
        (basic / f"Annotation/manual/{stem}_manu_attri.txt").write_text(
            f"{landmarks}{gender}\n0\n2\n")
    return basic


def test_rafdb_aligned_faces_with_split_and_gender(tmp_path):
    basic = _rafdb(tmp_path)
    expected = {"images": 4, "subjects": 4, "sequences": 4,
                "per_class": {"happiness": 1, "neutral": 1, "sadness": 1, "surprise": 1},
                "per_split": {"test": 1, "train": 3}}
    for given, prefix in ((tmp_path, "basic/"), (basic, "")):
        result = adapters.load("rafdb", given)
        assert counts(result.manifest) == expected
        assert _reasons(result) == {
            f"{prefix}EmoLabel/list_patition_label.txt:7": "label line is not '<image> <code>'",
            f"{prefix}Image/aligned/test_0002_aligned.jpg": "unknown RAF-DB emotion code '8'",
            f"{prefix}Image/aligned/train_00004_aligned.jpg": "missing file"}
    genders = dict(zip(result.manifest["image"], result.manifest["gender"]))
    assert genders == {"Image/aligned/test_0001_aligned.jpg": "",
                       "Image/aligned/train_00001_aligned.jpg": "f",
                       "Image/aligned/train_00002_aligned.jpg": "m",
                       "Image/aligned/train_00003_aligned.jpg": ""}


def test_rafdb_original_images_and_a_wrong_choice(tmp_path):
    _rafdb(tmp_path)
    result = adapters.load("rafdb", tmp_path, images="original")
    assert counts(result.manifest)["per_class"] == {"neutral": 1, "sadness": 1}
    assert list(result.manifest["image"]) == ["basic/Image/original/test_0001.jpg",
                                              "basic/Image/original/train_00001.jpg"]
    assert list(result.quarantine["reason"]).count("missing file") == 3
    with pytest.raises(ValueError, match="images must be one of aligned, original, not 'crop'"):
        adapters.load("rafdb", tmp_path, images="crop")


# -- SFEW, Oulu-CASIA ---------------------------------------------------------------------


def test_sfew_train_and_val_class_folders(tmp_path):
    root = _tree(tmp_path, ["Train/Angry/a.png", "Train/Happy/h1.png", "Train/Happy/h2.png",
                            "Val/Sad/s.png", "Val/Neutral/n.png", "Val/Contempt/c.png",
                            "Test/x.png", "Extra/Happy/e.png"])
    result = adapters.load("sfew", root)
    assert counts(result.manifest) == {
        "images": 5, "subjects": 5, "sequences": 5,
        "per_class": {"anger": 1, "happiness": 2, "neutral": 1, "sadness": 1},
        "per_split": {"Train": 3, "Val": 2}}
    assert _reasons(result) == {
        "Extra/Happy/e.png": "unknown SFEW split folder 'Extra'",
        "Test/x.png": "not in a <split>/<class>/ folder",
        "Val/Contempt/c.png": "unknown SFEW class folder 'Contempt'"}


def _oulu(root: Path) -> Path:
    sequences = {"VL/Strong/P001/Anger": 3, "VL/Strong/P001/Happiness": 2,
                 "VL/Strong/P002/Surprise": 3, "VL/Strong/P002/Neutral": 1,
                 "VL/Weak/P001/Anger": 1, "NI/Strong/P003/Fear": 2}
    _tree(root / "OriginalImg", [f"{folder}/{n:03d}.jpeg" for folder, frames in sequences.items()
                                 for n in range(frames)] + ["VL/Strong/P002/Surprise/notes.jpeg"])
    return root


def test_oulu_casia_reads_one_modality_and_illumination(tmp_path):
    root = _oulu(tmp_path)
    result = adapters.load("oulu_casia", root)
    assert counts(result.manifest) == {
        "images": 8, "subjects": 2, "sequences": 3,
        "per_class": {"anger": 3, "happiness": 2, "surprise": 3}, "per_split": {"all": 8}}
    assert _reasons(result) == {
        "OriginalImg/VL/Strong/P002/Neutral/000.jpeg": "unknown Oulu-CASIA expression 'Neutral'",
        "OriginalImg/VL/Strong/P002/Surprise/notes.jpeg":
            "not <subject>/<expression>/<number>.jpeg"}
    anger = result.manifest[result.manifest["sequence"] == "Anger"]
    assert list(anger["frame"]) == [1, 2, 3] and set(anger["subject"]) == {"P001"}
    near_infrared = adapters.load("oulu_casia", root / "OriginalImg", modality="NI")
    assert counts(near_infrared.manifest)["per_class"] == {"fear": 2}
    weak = adapters.load("oulu_casia", root, illumination="Weak")
    assert list(weak.manifest["image"]) == ["OriginalImg/VL/Weak/P001/Anger/000.jpeg"]
    with pytest.raises(ValueError, match="modality must be one of VL, NI, not 'IR'"):
        adapters.load("oulu_casia", root, modality="IR")
    with pytest.raises(adapters.DatasetNotFoundError, match="NI/Dark does not exist"):
        adapters.load("oulu_casia", root, modality="NI", illumination="Dark")


# -- errors and the command line ----------------------------------------------------------


@pytest.mark.parametrize("name", NATIVE)
def test_missing_root_quotes_the_layout_and_where_to_obtain_the_data(tmp_path, name):
    reader = adapters.ADAPTERS[name]
    assert reader.OBTAIN and reader.LAYOUT
    with pytest.raises(adapters.DatasetNotFoundError) as err:
        adapters.load(name, tmp_path / "nowhere")
    message = str(err.value)
    assert reader.LAYOUT in message and reader.OBTAIN in message and "nowhere" in message
    assert "\n" not in message


def test_all_eight_datasets_have_a_native_adapter():
    assert NATIVE == ["ckplus", "ckplus48", "fer2013", "ferg", "jaffe", "oulu_casia", "rafdb",
                      "sfew"]


def test_cli_prints_the_counts_of_fer2013_csv_and_ckplus(tmp_path):
    _fer2013_csv(tmp_path / "fer")
    summary, lines = _cli_counts("fer2013", tmp_path / "fer")
    assert summary == "images: 4  subjects: 4  sequences: 4  quarantined: 3"
    assert lines == {"anger": "1", "happiness": "2", "neutral": "1", "PrivateTest": "1",
                     "PublicTest": "1", "Training": "2"}
    summary, lines = _cli_counts("ckplus", _ckplus(tmp_path / "ck"))
    assert summary == "images: 9  subjects: 3  sequences: 3  quarantined: 3"
    assert lines == {"disgust": "3", "happiness": "4", "surprise": "2", "all": "9"}
