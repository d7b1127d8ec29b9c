"""Dataset adapters: read a dataset in the layout its owners distribute into a manifest.

An adapter only lists candidate rows (image path, raw label, whatever ids the layout
carries). One shared pass then maps labels to canonical names, fills defaults, checks the
files and quarantines what cannot be used, so every dataset obeys the same rules and a bad
file is counted instead of stopping the study. The generic readers are here; those of the
licensed datasets (FER2013, CK+, JAFFE, ...) are in `native`.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

import pandas as pd

from ferbench.data import images
from ferbench.data import manifest as manifest_mod
from ferbench.data.download import sha256sum

#: Top-level folder names read as the dataset's own split (FER2013 train/test, SFEW Train/Val).
SPLIT_FOLDERS = {"train": "train", "training": "train", "test": "test", "val": "val",
                 "valid": "val", "validation": "val"}

#: Label spellings found in public datasets -> canonical names; a `label_map` adds to these.
DEFAULT_LABELS = {
    **{name: name for name in manifest_mod.CANONICAL_LABELS},
    "angry": "anger", "disgusted": "disgust", "fearful": "fear", "afraid": "fear",
    "happy": "happiness", "joy": "happiness", "sad": "sadness", "surprised": "surprise",
}

#: Fields a folder `pattern` may capture from a file name.
PATTERN_FIELDS = frozenset({"label", "subject", "sequence", "frame"})

#: Manifest column -> table column the csv adapter reads by default.
CSV_COLUMNS = {"image": "image", "label": "label", "subject": "subject",
               "sequence": "sequence", "frame": "frame", "source_split": "split",
               "gender": "gender", "gt_bbox": "gt_bbox", "landmarks": "landmarks"}

#: Adapter name -> reader(root, **options) -> candidate rows; each reader has a LAYOUT and
#: an OBTAIN text (where a licensed dataset is requested; None for the generic readers).
ADAPTERS: dict[str, Callable] = {}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset (or the index file its layout needs) is not where the config says."""


@dataclass(frozen=True)
class Ingest:
    """What ingest produces: the validated manifest and the files it could not use."""

    manifest: pd.DataFrame
    quarantine: pd.DataFrame


class _Missing(Exception):
    """Raised by readers for an absent required path; `load` turns it into a clear error."""

    def __init__(self, path: Path, problem: str = "does not exist"):
        super().__init__(f"{path} {problem}")


def load(name: str, root: Path, **options) -> Ingest:
    """Read dataset `root` through adapter `name` into a manifest plus a quarantine table.

    Every adapter takes `label_map` (extra label spellings or codes -> canonical names) and
    `obtain` (where to get the data, quoted when it is missing instead of the adapter's own
    OBTAIN text); the rest is per adapter.
    """
    if name not in ADAPTERS:
        raise ValueError(f"unknown adapter {name!r}; known: {', '.join(sorted(ADAPTERS))}")
    reader = ADAPTERS[name]
    obtain = options.pop("obtain", None) or reader.OBTAIN
    labels = _label_map(options.pop("label_map", None))
    accepted = [p for p in inspect.signature(reader).parameters if p != "root"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"adapter {name!r} has no option {', '.join(unknown)}; options: "
                         f"{', '.join(accepted + ['label_map', 'obtain'])}")
    root = Path(root)
    try:
        if not root.is_dir():
            raise _Missing(root, "is not a folder" if root.exists() else "does not exist")
        rows = reader(root, **options)
        if not rows:
            raise _Missing(root, "holds no images")
    except _Missing as missing:
        where = f"; obtain it from {obtain}" if obtain else ""
        raise DatasetNotFoundError(f"{name} dataset not found: {missing}; expected layout: "
                                   f"{reader.LAYOUT}{where}") from None
    return _ingest(rows, root, labels)


def _adapter(name: str, layout: str, obtain: str | None = None):
    """Register a reader under `name`, with the layout and the place to obtain the data that
    its not-found error quotes."""
    def register(reader: Callable) -> Callable:
        reader.LAYOUT = layout
        reader.OBTAIN = obtain
        ADAPTERS[name] = reader
        return reader
    return register


def _require(path: Path) -> Path:
    if not path.exists():
        raise _Missing(path)
    return path


# -- readers ------------------------------------------------------------------------------


@_adapter("folder", "root/<label>/<image files>, optionally under root/train|val|test/, or "
                    "a flat folder whose file names carry the label (`pattern`)")
def read_folder(root: Path, *, pattern: str | None = None,
                split_folders: bool = True) -> list[dict]:
    """One row per image file; the label is the file's parent folder unless `pattern`
    (a regular expression matched at the start of the file stem, with named groups among
    label, subject, sequence, frame) captures one."""
    regex = _compile(pattern) if pattern else None
    rows = []
    for path in _image_files(root):
        rel = path.relative_to(root)
        folders = list(rel.parts[:-1])
        row = {"image": rel.as_posix()}
        if split_folders and folders and folders[0].lower() in SPLIT_FOLDERS:
            row["source_split"] = SPLIT_FOLDERS[folders.pop(0).lower()]
        row["label"] = folders[-1] if folders else ""
        if regex:
            match = regex.match(path.stem)
            if match:
                row.update({k: v for k, v in match.groupdict().items() if v is not None})
            else:
                row["reason"] = "name does not match pattern"
        rows.append(row)
    return rows


@_adapter("csv", "root/<table> (default labels.csv) with columns image (path relative to "
                 "root) and label, optionally subject, sequence, frame, split, gender, "
                 "gt_bbox, landmarks")
def read_csv(root: Path, *, table: str = "labels.csv",
             columns: dict[str, str] | None = None) -> list[dict]:
    """One row per table row; `columns` maps manifest column names to the table's."""
    names = {**CSV_COLUMNS, **(columns or {})}
    frame = pd.read_csv(_require(root / table), dtype=str, keep_default_na=False)
    absent = [names[c] for c in ("image", "label") if names[c] not in frame.columns]
    if absent:
        raise ValueError(f"{root / table} has no column {', '.join(absent)} (it has "
                         f"{', '.join(frame.columns)}); map yours with the `columns` option")
    present = {ours: theirs for ours, theirs in names.items() if theirs in frame.columns}
    return [{ours: record[theirs].strip() for ours, theirs in present.items()}
            for record in frame.to_dict("records")]


@_adapter("synthetic", "root/manifest.csv written by the generator (source: generate), "
                       "listing root/<subject>/<sequence>/<frame>.png")
def read_synthetic(root: Path) -> list[dict]:
    """The generator's own table: the csv layout with the manifest's column names."""
    return read_csv(root, table="manifest.csv", columns={"source_split": "source_split"})


def _compile(pattern: str) -> re.Pattern:
    regex = re.compile(pattern)
    unknown = sorted(set(regex.groupindex) - PATTERN_FIELDS)
    if unknown:
        raise ValueError(f"pattern group(s) {', '.join(unknown)} not among "
                         f"{', '.join(sorted(PATTERN_FIELDS))}")
    return regex


def _image_files(root: Path) -> list[Path]:
    """Image files under root in a stable order, skipping hidden files and the `__MACOSX`
    resource forks that zips made on a Mac carry (`._name.png` is no image)."""
    files = (p for p in root.rglob("*")
             if p.suffix.lower() in images.IMAGE_SUFFIXES and p.is_file()
             and not any(part.startswith(".") or part == "__MACOSX"
                         for part in p.relative_to(root).parts))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


# -- the shared pass ----------------------------------------------------------------------


def _label_key(value) -> str:
    """Case-insensitive key; numeric codes compare as integers ("3", "3.0", 3 are one)."""
    text = str(value).strip().lower()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def _label_map(extra: dict | None) -> dict[str, str]:
    labels = {_label_key(k): v for k, v in DEFAULT_LABELS.items()}
    for key, value in (extra or {}).items():
        if value not in manifest_mod.CANONICAL_LABELS:
            raise ValueError(f"label_map maps {key!r} to {value!r}, not one of "
                             f"{', '.join(manifest_mod.CANONICAL_LABELS)}")
        labels[_label_key(key)] = value
    return labels


def _problem(row: dict, root: Path, labels: dict[str, str]) -> str | None:
    """Why a candidate row cannot enter the manifest, or None: cheap checks, and one decode
    of each image file, which finds the truncated ones (images.decode_problem)."""
    if row.get("reason"):
        return row["reason"]
    if not row.get("label"):
        return "no label"
    if _label_key(row["label"]) not in labels:
        return f"unknown label {row['label']!r}"
    image = PurePosixPath(row["image"].replace("\\", "/"))
    if not image.parts:
        return "no image path"
    if image.is_absolute() or ".." in image.parts:
        return "path outside dataset root"
    if row.get("subject") == "":
        return "no subject"
    if not re.fullmatch(r"\d+", str(row.get("frame") or 1)):
        return "frame is not a number"
    located = images.table_row(image.as_posix())
    path = root / (located[0] if located else image)
    if not path.is_file():
        return "missing file"
    if path.stat().st_size == 0:
        return "empty file"
    return None if located else images.decode_problem(path)


def _complete(row: dict, labels: dict[str, str]) -> dict:
    """Canonical label and defaults: an image without identity or sequence is its own."""
    image = row["image"].replace("\\", "/")
    image_id = image if images.table_row(image) else PurePosixPath(image).with_suffix("")
    return {**row, "image": image, "label": labels[_label_key(row["label"])],
            "subject": row.get("subject") or str(image_id),
            "sequence": row.get("sequence") or str(image_id),
            "frame": int(row.get("frame") or 1),
            "source_split": row.get("source_split") or "all"}


def _conflicts(rows: list[dict], root: Path) -> dict[int, str]:
    """Row index -> reason, for images whose label is ambiguous: the same path listed
    twice, or one file (same name, same bytes) filed under several classes.

    Bytes are compared because some repackagings number files per class folder
    (angry/im0.png, happy/im0.png): a shared name alone does not make them the same image.
    Rows of a pixel table (`fer2013.csv#12`) are not files and name themselves uniquely.
    """
    table = pd.DataFrame({"image": [r["image"] for r in rows],
                          "label": [r["label"] for r in rows]})
    reasons = {i: "listed more than once" for i in table.index[table["image"].duplicated(False)]}
    table["name"] = table["image"].map(lambda p: PurePosixPath(p).name)
    clash = table[(table.groupby("name")["label"].transform("nunique") > 1)
                  & ~table.index.isin(list(reasons))
                  & table["image"].map(images.table_row).isna()].copy()
    clash["digest"] = clash["image"].map(lambda p: sha256sum(root / p))
    shared = clash.groupby("digest")["label"].transform("nunique") > 1
    reasons.update({i: "same file in several classes" for i in clash.index[shared]})
    return reasons


def _ingest(rows: list[dict], root: Path, labels: dict[str, str]) -> Ingest:
    usable, quarantined = [], []
    for row in rows:
        reason = _problem(row, root, labels)
        if reason:
            quarantined.append({"image": row["image"], "reason": reason})
        else:
            usable.append(_complete(row, labels))
    conflicts = _conflicts(usable, root) if usable else {}
    quarantined += [{"image": usable[i]["image"], "reason": r} for i, r in conflicts.items()]
    kept = [row for i, row in enumerate(usable) if i not in conflicts]
    extra = [c for c in manifest_mod.OPTIONAL_COLUMNS if any(c in row for row in kept)]
    manifest = pd.DataFrame(kept, columns=[*manifest_mod.REQUIRED_COLUMNS, *extra])
    quarantine = pd.DataFrame(quarantined, columns=["image", "reason"])
    return Ingest(manifest=manifest_mod.validate(manifest.fillna("")),
                  quarantine=quarantine.sort_values(["image", "reason"], kind="stable")
                  .reset_index(drop=True))


# The dataset-specific readers register themselves in ADAPTERS; imported last because they
# build on the helpers above.
from ferbench.data import native  # noqa: E402,F401
