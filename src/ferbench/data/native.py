"""Readers of the licensed FER datasets, each in the exact layout its owners distribute.

They register in the adapter registry beside the generic `folder` and `csv` readers and,
like them, only list candidate rows; the shared pass in `adapters` checks the files, fills
defaults and quarantines. Each reader translates its dataset's own codes and class names
with its own table, because the same number means different expressions in different
datasets (3 is happiness in FER2013, disgust in CK+). A value a dataset does not define
puts the row in quarantine with the reason, never in another class.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import pandas as pd

from ferbench.data.adapters import _adapter, _image_files, _label_key, _require
from ferbench.data.images import PIXEL_COLUMN, parse_pixel_rows, read_pixel_table, row_image

#: The seven class folders of FER2013's folder repackaging and of SFEW (any letter case).
BASIC_FOLDERS = {"angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "happiness",
                 "neutral": "neutral", "sad": "sadness", "surprise": "surprise"}

FER2013_CODES = {"0": "anger", "1": "disgust", "2": "fear", "3": "happiness", "4": "sadness",
                 "5": "surprise", "6": "neutral"}
FER2013_COLUMNS = ("emotion", PIXEL_COLUMN, "Usage")
#: Kaggle's folder repackagings keep the CSV's Usage in the file name: PublicTest_12345.jpg.
FER2013_USAGE_IN_NAME = re.compile(r"(Training|PublicTest|PrivateTest)_")

CKPLUS_CODES = {"0": "neutral", "1": "anger", "2": "contempt", "3": "disgust", "4": "fear",
                "5": "happiness", "6": "sadness", "7": "surprise"}
CKPLUS_FOLDERS = ("cohn-kanade-images", "Emotion", "Landmarks", "FACS")
#: S005_001_00000011: subject, sequence, frame (CK+ and its CK+48 derivative).
CKPLUS_FRAME_NAME = re.compile(r"(?P<subject>S\d+)_(?P<sequence>\d+)_(?P<frame>\d+)")
CKPLUS_LANDMARKS = 68
CKPLUS48_FOLDERS = {"anger": "anger", "contempt": "contempt", "disgust": "disgust",
                    "fear": "fear", "happy": "happiness", "sadness": "sadness",
                    "surprise": "surprise"}

JAFFE_CODES = {"an": "anger", "di": "disgust", "fe": "fear", "ha": "happiness", "ne": "neutral",
               "sa": "sadness", "su": "surprise"}
#: KA.AN1.39: subject, expression code + repetition, picture id.
JAFFE_NAME = re.compile(r"(?P<subject>[A-Z]{2})\.(?P<code>[A-Z]{2})\d+\.\d+", re.IGNORECASE)

FERG_EXPRESSIONS = {"anger": "anger", "disgust": "disgust", "fear": "fear", "joy": "happiness",
                    "neutral": "neutral", "sadness": "sadness", "surprise": "surprise"}
#: The characters' genders, for DAM-CNN's gender-bound decoders.
FERG_GENDERS = {"aia": "f", "bonnie": "f", "jules": "m", "malcolm": "m", "mery": "f", "ray": "m"}

RAFDB_CODES = {"1": "surprise", "2": "fear", "3": "disgust", "4": "happiness", "5": "sadness",
               "6": "anger", "7": "neutral"}
RAFDB_LABELS = "EmoLabel/list_patition_label.txt"
RAFDB_IMAGES = {"aligned": "Image/aligned/{stem}_aligned.jpg",
                "original": "Image/original/{name}"}
RAFDB_ATTRIBUTES = "Annotation/manual/{stem}_manu_attri.txt"
#: Gender codes of the manual attribute files (2, "unsure", stays empty).
RAFDB_GENDERS = {"0": "m", "1": "f"}
#: A manual attribute file holds 5 landmark lines, then gender, race and age.
RAFDB_GENDER_LINE = 5

SFEW_SPLITS = {"train": "Train", "val": "Val"}

OULU_EXPRESSIONS = {name: name for name in
                    ("anger", "disgust", "fear", "happiness", "sadness", "surprise")}
OULU_MODALITIES = ("VL", "NI")
OULU_ILLUMINATIONS = ("Strong", "Weak", "Dark")

CKPLUS_OBTAIN = ("the Affect Analysis Group, University of Pittsburgh "
                 "(https://www.jeffcohn.net/Resources/), after signing the CK+ agreement")


# -- readers ------------------------------------------------------------------------------


@_adapter("fer2013",
          "root/fer2013.csv (columns emotion,pixels,Usage; also accepted in root/fer2013/), or "
          "the folder repackaging root/train|test/<angry|disgust|fear|happy|neutral|sad|"
          "surprise>/*.jpg",
          "Kaggle's 'Challenges in Representation Learning: Facial Expression Recognition "
          "Challenge' (https://www.kaggle.com/c/challenges-in-representation-learning-facial-"
          "expression-recognition-challenge/data): accept its rules, download fer2013.tar.gz")
def read_fer2013(root: Path) -> list[dict]:
    """The original CSV when there is one, else the folder repackaging. No identities: each
    face is its own subject. The owners' split names are kept (Training/PublicTest/
    PrivateTest) so the predefined protocol can tell PublicTest from PrivateTest."""
    table = _find(root, "fer2013.csv")
    if table and table.is_file():
        return _fer2013_rows(root, table)
    return _class_folder_rows(root, root, BASIC_FOLDERS, "FER2013",
                              splits={"train": "train", "test": "test"},
                              from_name=_fer2013_usage)


@_adapter("ckplus",
          "root/cohn-kanade-images/S005/001/S005_001_00000001.png and root/Emotion/S005/001/"
          "S005_001_00000011_emotion.txt, optionally root/Landmarks/S005/001/"
          "S005_001_00000001_landmarks.txt and root/FACS/S005/001/S005_001_00000011_facs.txt "
          "(root may be the folder above; the label folders may sit one level deeper, a zip "
          "each)",
          f"{CKPLUS_OBTAIN}; unzip the images, Emotion, Landmarks and FACS archives side by side")
def read_ckplus(root: Path) -> list[dict]:
    """Every frame of every labelled sequence, carrying the sequence's label (the fold stage
    picks the frames a protocol uses: last, last three, first as neutral), the frame's own
    landmarks and the sequence's action units. Unlabelled sequences are not part of CK+'s
    expression set and are not listed."""
    # the other folders are looked for beside the images, or one level down (a zip each);
    # images and labels are required (`_require` raises for the absent one), the rest optional
    frames = _find(root, CKPLUS_FOLDERS[0]) or _require(root / CKPLUS_FOLDERS[0])
    emotions, landmarks, facs = (_find(frames.parent, name) for name in CKPLUS_FOLDERS[1:])
    _require(emotions or frames.parent / CKPLUS_FOLDERS[1])
    rows = []
    for emotion_file in sorted(_visible(emotions.glob("*/*/*_emotion.txt"))):
        sequence_dir = emotion_file.parent.relative_to(emotions)
        subject, sequence = sequence_dir.parts
        label = _labelled(emotion_file.read_text(), CKPLUS_CODES, "CK+ emotion code")
        action_units = _ckplus_action_units(facs / sequence_dir if facs else None)
        # the emotion file is named after the peak frame: list it even if the image is missing
        peak = frames / sequence_dir / (emotion_file.name.removesuffix("_emotion.txt") + ".png")
        for path in sorted(set(_image_files(frames / sequence_dir)) | {peak}):
            rows.append({"image": path.relative_to(root).as_posix(), "subject": subject,
                         "sequence": sequence, **label, **_ckplus_frame(path.stem),
                         "landmarks": _ckplus_landmarks(landmarks, sequence_dir, path.stem),
                         "facs": action_units})
    return rows


@_adapter("ckplus48",
          "root/CK+48/<anger|contempt|disgust|fear|happy|sadness|surprise>/"
          "S010_004_00000017.png (root may be CK+48 itself)",
          f"a CK+48 copy (circulated on Kaggle and GitHub), made from CK+ as released by "
          f"{CKPLUS_OBTAIN}")
def read_ckplus48(root: Path) -> list[dict]:
    """Class folders of 48x48 crops; subject, sequence and frame come from the file name."""
    return _class_folder_rows(root, _find(root, "CK+48") or root, CKPLUS48_FOLDERS, "CK+48",
                              from_name=_ckplus_frame)


@_adapter("jaffe",
          "root/KA.AN1.39.tiff ... named <subject>.<AN|DI|FE|HA|NE|SA|SU><n>.<id>.tiff or "
          ".tif, flat in root or in root/jaffe/",
          "https://zenodo.org/record/3451524 (JAFFE, Lyons, Kamachi & Gyoba): request access on "
          "Zenodo following its instructions; non-commercial research only")
def read_jaffe(root: Path) -> list[dict]:
    """One row per picture; the subject and expression come from the file name, and each
    picture is its own sequence (JAFFE poses are separate shots, not a recording)."""
    rows = []
    for path in _image_files(root):
        row = {"image": path.relative_to(root).as_posix()}
        name = JAFFE_NAME.fullmatch(path.stem)
        if name:
            row.update(subject=name["subject"].upper(),
                       **_labelled(name["code"], JAFFE_CODES, "JAFFE expression code"))
        else:
            row["reason"] = "name is not <subject>.<expression><n>.<id>"
        rows.append(row)
    return rows


@_adapter("ferg",
          "root/FERG_DB_256/<character>/<character>_<expression>/<character>_<expression>_<n>"
          ".png (root may be FERG_DB_256 itself)",
          "the FERG-DB request form of the GRAIL lab, University of Washington "
          "(https://grail.cs.washington.edu/projects/deepexpr/ferg-db.html); research use only")
def read_ferg(root: Path) -> list[dict]:
    """One row per rendered face; the character is the subject and carries its gender."""
    base = _find(root, "FERG_DB_256") or root
    rows = []
    for path in _image_files(base):
        row = {"image": path.relative_to(root).as_posix()}
        rows.append(row)
        folders = path.relative_to(base).parts[:-1]
        character = folders[0].lower() if folders else ""
        if len(folders) != 2 or not folders[1].lower().startswith(character + "_"):
            row["reason"] = "not in <character>/<character>_<expression>/"
            continue
        row.update(subject=character, gender=FERG_GENDERS.get(character, ""),
                   **_labelled(folders[1][len(character) + 1:], FERG_EXPRESSIONS,
                               "FERG expression"))
        if character not in FERG_GENDERS:
            row["reason"] = f"unknown FERG character {folders[0]!r}"
    return rows


@_adapter("rafdb",
          "root/basic/EmoLabel/list_patition_label.txt with root/basic/Image/aligned/"
          "train_00001_aligned.jpg (option images: original reads Image/original/"
          "train_00001.jpg), optionally root/basic/Annotation/manual/"
          "train_00001_manu_attri.txt (root may be basic itself)",
          "http://www.whdeng.cn/RAF/model1.html (RAF-DB, Li & Deng): e-mail the signed "
          "agreement to the authors for the password; the `basic` part is the one read")
def read_rafdb(root: Path, *, images: str = "aligned") -> list[dict]:
    """One row per line of the label list; the split is the file name's prefix (train/test),
    the gender comes from the manual attribute file when present. `images` picks the 100x100
    aligned faces (default; no face detection needed) or the original photographs."""
    _check_choice("rafdb", "images", images, tuple(RAFDB_IMAGES))
    base = _find(root, "basic") or root
    listing = _require(base / RAFDB_LABELS)
    rows = []
    for number, line in enumerate(listing.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            rows.append({"image": f"{listing.relative_to(root).as_posix()}:{number}",
                         "reason": "label line is not '<image> <code>'"})
            continue
        name, code = fields
        stem = Path(name).stem
        image = base / RAFDB_IMAGES[images].format(stem=stem, name=name)
        rows.append({"image": image.relative_to(root).as_posix(),
                     "source_split": stem.split("_")[0],
                     "gender": _rafdb_gender(base / RAFDB_ATTRIBUTES.format(stem=stem)),
                     **_labelled(code, RAFDB_CODES, "RAF-DB emotion code")})
    return rows


@_adapter("sfew",
          "root/Train|Val/<Angry|Disgust|Fear|Happy|Neutral|Sad|Surprise>/*.png",
          "the EmotiW organisers (A. Dhall; https://sites.google.com/site/emotiwchallenge/) "
          "under the SFEW 2.0 licence agreement")
def read_sfew(root: Path) -> list[dict]:
    """Film frames in class folders under Train and Val; no identities."""
    return _class_folder_rows(root, root, BASIC_FOLDERS, "SFEW", splits=SFEW_SPLITS)


@_adapter("oulu_casia",
          "root/OriginalImg/<VL|NI>/<Strong|Weak|Dark>/<P001..P080>/<Anger|Disgust|Fear|"
          "Happiness|Sadness|Surprise>/000.jpeg (root may be OriginalImg itself)",
          "the Center for Machine Vision and Signal Analysis, University of Oulu "
          "(https://www.oulu.fi/cmvs/), under the Oulu-CASIA NIR&VIS licence agreement")
def read_oulu_casia(root: Path, *, modality: str = "VL",
                    illumination: str = "Strong") -> list[dict]:
    """The neutral-to-apex sequences of one camera (`modality`) under one lighting
    (`illumination`); the papers use VL/Strong. Frames are numbered from 1 as in CK+."""
    _check_choice("oulu_casia", "modality", modality, OULU_MODALITIES)
    _check_choice("oulu_casia", "illumination", illumination, OULU_ILLUMINATIONS)
    recordings = _require((_find(root, "OriginalImg") or root) / modality / illumination)
    rows = []
    for path in _image_files(recordings):
        row = {"image": path.relative_to(root).as_posix()}
        folders = path.relative_to(recordings).parts[:-1]
        if len(folders) == 2 and path.stem.isdigit():
            row.update(subject=folders[0], sequence=folders[1], frame=int(path.stem) + 1,
                       **_labelled(folders[1], OULU_EXPRESSIONS, "Oulu-CASIA expression"))
        else:
            row["reason"] = "not <subject>/<expression>/<number>.jpeg"
        rows.append(row)
    return rows


# -- helpers ------------------------------------------------------------------------------


def _find(root: Path, name: str) -> Path | None:
    """`root/name`, else `root/<folder>/name`: users point at the folder they unpacked an
    archive into as often as at the dataset's own top folder."""
    candidates = [root / name, *sorted(root.glob(f"*/{name}"))]
    return next((path for path in candidates if path.exists()), None)


def _visible(paths) -> list[Path]:
    """Paths without the `._name` resource forks and `.DS_Store` files a Mac leaves."""
    return [path for path in paths if not path.name.startswith(".")]


def _labelled(value: str, vocabulary: dict[str, str], what: str) -> dict:
    """{"label": canonical name} for a value the dataset defines, else a quarantine reason."""
    label = vocabulary.get(_label_key(value))
    return {"label": label} if label else {"reason": f"unknown {what} {value.strip()!r}"}


def _check_choice(adapter: str, option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{adapter} option {option} must be one of {', '.join(choices)}, "
                         f"not {value!r}")


def _class_folder_rows(root: Path, base: Path, classes: dict[str, str], dataset: str, *,
                       splits: dict[str, str] | None = None,
                       from_name: Callable[[str], dict] | None = None) -> list[dict]:
    """Rows of the `base/[<split>/]<class>/<image>` shape that FER2013's folder form, CK+48
    and SFEW share: split and class folder names are the dataset's own (any letter case),
    `from_name` reads further fields out of the file stem."""
    shape, depth = ("<split>/<class>/", 2) if splits else ("<class>/", 1)
    rows = []
    for path in _image_files(base):
        row = {"image": path.relative_to(root).as_posix()}
        rows.append(row)
        folders = path.relative_to(base).parts[:-1]
        if len(folders) != depth:
            row["reason"] = f"not in a {shape} folder"
            continue
        if splits:
            if folders[0].lower() not in splits:
                row["reason"] = f"unknown {dataset} split folder {folders[0]!r}"
                continue
            row["source_split"] = splits[folders[0].lower()]
        row.update(from_name(path.stem) if from_name else {})
        row.update(_labelled(folders[-1], classes, f"{dataset} class folder"))
    return rows


def _fer2013_rows(root: Path, table: Path) -> list[dict]:
    """One row per CSV row, named `fer2013.csv#<row>`; a pixel string that does not decode
    to a 48x48 face is quarantined here rather than found corrupt later. The table is read
    a chunk of rows at a time (`images.read_pixel_table`), never whole."""
    columns = list(pd.read_csv(table, nrows=0).columns)
    absent = [column for column in FER2013_COLUMNS if column not in columns]
    if absent:
        raise ValueError(f"{table} has no column {', '.join(absent)} (it has "
                         f"{', '.join(columns)}); expected {','.join(FER2013_COLUMNS)}")
    name = table.relative_to(root).as_posix()
    rows = []
    for chunk in read_pixel_table(table, list(FER2013_COLUMNS)):
        _, problems = parse_pixel_rows(chunk[PIXEL_COLUMN])
        for code, usage, problem in zip(chunk["emotion"], chunk["Usage"], problems):
            row = {"image": row_image(name, len(rows)), "source_split": usage.strip(),
                   **_labelled(code, FER2013_CODES, "FER2013 emotion code")}
            if problem:
                row["reason"] = f"malformed pixels: {problem}"
            rows.append(row)
    return rows


def _fer2013_usage(stem: str) -> dict:
    usage = FER2013_USAGE_IN_NAME.match(stem)
    return {"source_split": usage[1]} if usage else {}


def _ckplus_frame(stem: str) -> dict:
    """Subject, sequence and frame number of a `S005_001_00000011` file stem."""
    name = CKPLUS_FRAME_NAME.fullmatch(stem)
    if not name:
        return {"reason": "name is not S<subject>_<sequence>_<frame>"}
    return {"subject": name["subject"], "sequence": name["sequence"],
            "frame": int(name["frame"])}


def _ckplus_landmarks(landmarks: Path | None, sequence_dir: Path, stem: str) -> str:
    """The frame's 68 points as "x0 y0 ... x67 y67" (image pixels), "" without a usable
    file: the landmark stage then falls back to a detector for that frame."""
    numbers = _numbers(landmarks / sequence_dir / f"{stem}_landmarks.txt" if landmarks else None)
    return " ".join(map(str, numbers)) if len(numbers) == 2 * CKPLUS_LANDMARKS else ""


def _ckplus_action_units(facs_sequence: Path | None) -> str:
    """The sequence's action units as "1+2+5" (each FACS line is `<AU> <intensity>`), ""
    without a usable file."""
    files = sorted(_visible(facs_sequence.glob("*_facs.txt"))) if facs_sequence else []
    numbers = _numbers(files[0] if files else None)
    return "+".join(str(int(au)) for au in numbers[::2]) if len(numbers) % 2 == 0 else ""


def _numbers(path: Path | None) -> list[float]:
    """Every number of a CK+ annotation file (scientific notation), [] when there is no
    such file or it holds something else."""
    if path is None or not path.is_file():
        return []
    try:
        return [float(value) for value in path.read_text().split()]
    except ValueError:
        return []


def _rafdb_gender(attributes: Path) -> str:
    if not attributes.is_file():
        return ""
    lines = attributes.read_text().splitlines()
    code = lines[RAFDB_GENDER_LINE].strip() if len(lines) > RAFDB_GENDER_LINE else ""
    return RAFDB_GENDERS.get(code, "")
