"""`ferbench predict` and `ferbench.predict`: the expression of every face in still images.

Each image goes through the face stage of `ferbench live` (live.Recognizer: the model's own
detector, then `faces.preprocess_face` with the face options the model records) and the
model, one image at a time; the answer is one row per face found: the file, the face's box,
the most likely label and its probability, and the probability of every class. Images are
decoded by OpenCV as the face stage decodes a dataset's: BMP, GIF (its first frame), JPEG,
PNG, TIFF and WebP, 16-bit PNG and TIFF scaled to 8 bits.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import pandas as pd
import torch

from ferbench import live
from ferbench.data.images import folder_images

#: The table's leading columns; one `p_<label>` column per class follows.
COLUMNS = ("file", "face", "x", "y", "w", "h", "label", "probability")
#: The formats `ferbench predict` writes.
FORMATS = ("csv", "jsonl")


def image_files(sources) -> list[Path]:
    """The files named, and each named folder's images, sorted."""
    found = []
    for source in [sources] if isinstance(sources, (str, Path)) else sources:
        path = Path(source)
        if path.is_dir():
            found += folder_images(path)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such image or folder: {source}")
    return found


def predict(images, model, tracking_uri: str | None = None,
            device: str | torch.device = "cpu") -> pd.DataFrame:
    """One row per face in `images` (a path or paths of image files and folders) by `model`:
    a model.pt path, an MLflow `runs:/<run id>/model` or `models:/<name>/<version>` URI
    (on `tracking_uri`), or a live.LiveModel. Columns: COLUMNS, then `p_<label>` per class.
    An image that does not decode is skipped with a warning, as `ferbench live` skips it."""
    device = torch.device(device)
    loaded = model if isinstance(model, live.LiveModel) else \
        live.load_live_model(model, device, tracking_uri)
    labels = loaded.labels
    rows = []
    with live.Recognizer(loaded, device) as recognizer:
        for path in image_files(images):
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if frame is None:
                print(f"skipping unreadable image {path}", file=sys.stderr)
                continue
            result = recognizer(frame)
            for face, (box, probs) in enumerate(zip(result.boxes, result.probabilities)):
                best = int(probs.argmax())
                rows.append([str(path), face, *box, labels[best], float(probs[best]),
                             *map(float, probs)])
    return pd.DataFrame(rows, columns=[*COLUMNS, *(f"p_{label}" for label in labels)])


def write(table: pd.DataFrame, handle, form: str = "csv") -> None:
    """The table as CSV, or as JSON Lines in `ferbench live`'s faces.jsonl layout (a box
    list and a probabilities object per face); probabilities rounded to 6 decimals."""
    if form not in FORMATS:
        raise ValueError(f"unknown format {form!r} (known: {', '.join(FORMATS)})")
    probability_columns = [c for c in table.columns if c.startswith("p_")]
    rounded = table.round({c: 6 for c in ["probability", *probability_columns]})
    if form == "csv":
        rounded.to_csv(handle, index=False, lineterminator="\n")
        return
    for row in rounded.to_dict("records"):
        handle.write(json.dumps({
            "file": row["file"], "face": row["face"],
            "box": [row[k] for k in ("x", "y", "w", "h")], "label": row["label"],
            "probability": row["probability"],
            "probabilities": {c.removeprefix("p_"): row[c] for c in probability_columns},
        }) + "\n")
