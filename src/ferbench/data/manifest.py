"""The data contract every dataset adapter produces (SPEC.md, "Data contract").

A manifest is a CSV table with one row per image. Keeping it a plain CSV (not parquet)
makes it diffable, byte-deterministic and readable without pandas.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

#: Canonical expression names, in the order used for class indices everywhere.
CANONICAL_LABELS = (
    "neutral",
    "anger",
    "contempt",
    "disgust",
    "fear",
    "happiness",
    "sadness",
    "surprise",
)

#: Class sets a protocol may pick (MobileNet paper, CK+ table).
CLASS_SETS = {
    "6": ("anger", "disgust", "fear", "happiness", "sadness", "surprise"),
    "7": ("neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise"),
    "7N": ("anger", "contempt", "disgust", "fear", "happiness", "sadness", "surprise"),
    "7C": ("neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise"),
    "8": CANONICAL_LABELS,
}

#: Columns every manifest carries. `image` is relative to the dataset root.
REQUIRED_COLUMNS = ("image", "label", "subject", "sequence", "frame", "source_split")

#: Optional columns an adapter may add: a ground-truth face box "x y w h" in pixels of the
#: original image (the synthetic generator records it), the subject's gender `f`/`m`
#: (DAM-CNN's gender-bound decoders), the dataset's own 68 landmarks "x0 y0 ... x67 y67" in
#: pixels of the original image, iBUG 68-point order (CK+ ships them, the synthetic
#: generator records them; empty where a frame has none), and the sequence's FACS action
#: units "1+2+5" (CK+).
OPTIONAL_COLUMNS = ("gt_bbox", "gender", "landmarks", "facs")


class ManifestError(ValueError):
    """A manifest that breaks the data contract."""


def validate(manifest: pd.DataFrame) -> pd.DataFrame:
    """Check the contract and return the manifest with canonical dtypes and row order."""
    missing = [c for c in REQUIRED_COLUMNS if c not in manifest.columns]
    if missing:
        raise ManifestError(f"manifest lacks column(s): {', '.join(missing)}")
    unknown = sorted(set(manifest["label"]) - set(CANONICAL_LABELS))
    if unknown:
        raise ManifestError(f"manifest has non-canonical label(s): {', '.join(map(str, unknown))}")
    if manifest["image"].duplicated().any():
        dup = manifest.loc[manifest["image"].duplicated(), "image"].iloc[0]
        raise ManifestError(f"manifest lists an image twice: {dup}")
    if (manifest["subject"].astype(str).str.len() == 0).any():
        raise ManifestError("manifest has rows with an empty subject")
    out = manifest.copy()
    for col in ("image", "label", "subject", "sequence", "source_split"):
        out[col] = out[col].astype(str)
    out["frame"] = out["frame"].astype(int)
    return out.sort_values("image", kind="stable").reset_index(drop=True)


def write(manifest: pd.DataFrame, path: str | Path) -> Path:
    """Validate and write a manifest as CSV; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    validate(manifest).to_csv(path, index=False, lineterminator="\n")
    return path


def read(path: str | Path) -> pd.DataFrame:
    """Read a manifest written by `write`, keeping ids as strings."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame["frame"] = frame["frame"].astype(int)
    return frame


def counts(manifest: pd.DataFrame) -> dict:
    """Counts a user checks before launching a study: per class, per source split, subjects."""
    return {
        "images": int(len(manifest)),
        "subjects": int(manifest["subject"].nunique()),
        "sequences": int(manifest[["subject", "sequence"]].drop_duplicates().shape[0]),
        "per_class": {k: int(v) for k, v in manifest["label"].value_counts().sort_index().items()},
        "per_split": {
            k: int(v) for k, v in manifest["source_split"].value_counts().sort_index().items()
        },
    }
