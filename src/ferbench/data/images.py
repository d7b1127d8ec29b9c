"""Decode the image a manifest row names: an image file, or one row of a pixel table.

FER2013 ships no image files: its 35,887 faces are rows of `fer2013.csv`, each a string of
2304 grey values. Rather than writing them out as files (raw data is never modified or
copied), the manifest names such a face `fer2013.csv#<row>` and every stage decodes it here.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

#: Side of the square grey faces a pixel table holds (FER2013: 48x48, row-major).
TABLE_FACE_SIDE = 48
TABLE_FACE_PIXELS = TABLE_FACE_SIDE * TABLE_FACE_SIDE

#: Suffixes of the image files a dataset folder or `ferbench live` / `predict` reads (OpenCV
#: decodes all of them, 16-bit PNG/TIFF included).
IMAGE_SUFFIXES = frozenset({".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".tif", ".tiff",
                            ".webp"})

def folder_images(folder: Path) -> list[Path]:
    """The image files directly in `folder` (IMAGE_SUFFIXES), in name order."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


#: Column of a pixel table that holds the space-separated grey values.
PIXEL_COLUMN = "pixels"

_TABLE_ROW = re.compile(r"(?P<table>.+\.csv)#(?P<row>\d+)", re.IGNORECASE)


def table_row(image: str) -> tuple[str, int] | None:
    """(table path, 0-based data row) for a `<table>.csv#<row>` image, None for a file."""
    match = _TABLE_ROW.fullmatch(image)
    return (match["table"], int(match["row"])) if match else None


def row_image(table: str, row: int) -> str:
    """The manifest name of data row `row` of pixel table `table` (a root-relative path)."""
    return f"{table}#{row}"


def parse_pixels(text: str) -> np.ndarray:
    """A 48x48 uint8 face from a pixel string; ValueError saying what is wrong with it."""
    values = str(text).split()
    if len(values) != TABLE_FACE_PIXELS:
        raise ValueError(f"{len(values)} pixel values, expected {TABLE_FACE_PIXELS}")
    try:
        grey = np.array(values, dtype=np.int64)
    except ValueError:
        raise ValueError("pixel values are not all integers") from None
    if grey.min() < 0 or grey.max() > 255:
        raise ValueError("pixel values outside 0-255")
    return grey.astype(np.uint8).reshape(TABLE_FACE_SIDE, TABLE_FACE_SIDE)


#: Rows of a pixel table read and parsed at a time: the table's text never sits in memory
#: whole (FER2013's is 290 MB of strings), only this many rows of it.
TABLE_CHUNK_ROWS = 2048


def parse_pixel_rows(texts) -> tuple[np.ndarray, list[str | None]]:
    """Many pixel strings: (n, 48, 48) uint8 faces (zeros where malformed) and each row's
    problem (None where it decodes). (Row by row: numpy's text parsers, over one chunk's
    joined text or over its bytes, measured slower here than `parse_pixels` per row.)"""
    faces = np.zeros((len(texts), TABLE_FACE_SIDE, TABLE_FACE_SIDE), np.uint8)
    problems: list[str | None] = []
    for i, text in enumerate(texts):
        try:
            faces[i] = parse_pixels(text)
            problems.append(None)
        except ValueError as malformed:
            problems.append(str(malformed))
    return faces, problems


def read_pixel_table(path, columns=None):
    """The pixel table at `path` as text columns, TABLE_CHUNK_ROWS rows at a time."""
    return pd.read_csv(path, usecols=columns, dtype=str, keep_default_na=False,
                       chunksize=TABLE_CHUNK_ROWS)


def decode_problem(path: str | Path) -> str | None:
    """Why an image file does not decode to its end, or None.

    OpenCV decodes a truncated JPEG without an error, its missing part grey, so such a file
    would enter the study as a face; Pillow raises instead, so every file Pillow recognises
    is decoded once here (JPEGs at 1/8 scale, which still reads every byte). Files Pillow
    does not recognise are left to the face stage, which counts what OpenCV cannot read as
    corrupt."""
    from PIL import Image

    try:
        opened = Image.open(path)
    except (OSError, SyntaxError, ValueError):  # not an image Pillow knows
        return None
    try:
        with opened:
            opened.draft(opened.mode, (1, 1))
            opened.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        return f"undecodable image: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
    return None


def read_image(root: str | Path, image: str) -> np.ndarray | None:
    """The BGR uint8 image that manifest entry `image` (relative to `root`) names, or None
    when it cannot be decoded, so that the face stage records it as corrupt."""
    located = table_row(image)
    if located is None:
        return cv2.imread(str(Path(root) / image), cv2.IMREAD_COLOR)
    table, row = located
    path = Path(root) / table
    if not path.is_file():
        return None
    stat = path.stat()
    chunks = _pixel_table(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    index, offset = divmod(row, TABLE_CHUNK_ROWS)
    if index >= len(chunks) or offset >= len(chunks[index][0]) or not chunks[index][1][offset]:
        return None
    return cv2.cvtColor(chunks[index][0][offset], cv2.COLOR_GRAY2BGR)


@functools.lru_cache(maxsize=2)
def _pixel_table(path: str, mtime_ns: int, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every face of a pixel table, as (faces, decodes) per TABLE_CHUNK_ROWS rows, `decodes`
    false where the pixel string is malformed. Parsed once per process (the face stage asks
    for all rows in turn); the file's modification time and size are part of the key so that
    a replaced table is read again."""
    chunks = []
    for chunk in read_pixel_table(path, [PIXEL_COLUMN]):
        faces, problems = parse_pixel_rows(chunk[PIXEL_COLUMN])
        chunks.append((faces, np.array([problem is None for problem in problems])))
    return chunks
