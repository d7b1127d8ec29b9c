"""Face stage: detect, crop with margin, resize, grayscale, illumination-normalise.

Every manifest row gets a recorded outcome (`detected`, `full-image`, `dropped`, `corrupt`),
so the report can say exactly what the detector did to the dataset. The per-face
preprocessing (`crop_face`) is shared with the live application so inference sees faces
prepared exactly as in training.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

HAAR_CASCADE = "haarcascade_frontalface_default.xml"


@dataclass(frozen=True)
class FaceOptions:
    """Mirror of the config's `datasets.<name>.faces` block."""

    detector: str = "haar"
    margin: float = 0.1
    size: int = 64
    grayscale: bool = True
    normalise: str = "clahe"
    miss_policy: str = "full-image"
    min_face: int = 40

    @classmethod
    def from_config(cls, block: dict) -> "FaceOptions":
        return cls(**block)


class HaarDetector:
    """OpenCV's Viola-Jones cascade, the detector the papers use."""

    name = "haar"

    def __init__(self, min_face: int = 40):
        path = cv2.data.haarcascades + HAAR_CASCADE
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise RuntimeError(f"OpenCV could not load its Haar cascade {path}")
        self.min_face = min_face

    def __call__(self, gray: np.ndarray) -> list[tuple[int, int, int, int]]:
        """All face boxes (x, y, w, h), largest first."""
        boxes = self.cascade.detectMultiScale(
            gray, scaleFactor=1.1, minNeighbors=5, minSize=(self.min_face, self.min_face)
        )
        boxes = [tuple(int(v) for v in b) for b in boxes]
        return sorted(boxes, key=lambda b: (-b[2] * b[3], b[0], b[1]))


def to_gray(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def normalise(gray: np.ndarray, method: str) -> np.ndarray:
    """Illumination normalisation: CLAHE or global histogram equalisation."""
    if method == "clahe":
        return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4)).apply(gray)
    if method == "equalize":
        return cv2.equalizeHist(gray)
    return gray


def crop_face(image: np.ndarray, box, options: FaceOptions) -> np.ndarray:
    """Square crop around `box` grown by `margin`, clipped to the image, resized and normalised."""
    height, width = image.shape[:2]
    x, y, w, h = box
    side = max(w, h) * (1.0 + 2.0 * options.margin)
    cx, cy = x + w / 2.0, y + h / 2.0
    x0, y0 = int(round(max(0.0, cx - side / 2))), int(round(max(0.0, cy - side / 2)))
    x1, y1 = int(round(min(width, cx + side / 2))), int(round(min(height, cy + side / 2)))
    crop = image[y0:y1, x0:x1]
    crop = cv2.resize(crop, (options.size, options.size), interpolation=cv2.INTER_AREA)
    if options.grayscale:
        crop = normalise(to_gray(crop), options.normalise)
    return crop


def iou(a, b) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0, min(ax1, bx1) - max(a[0], b[0]))
    ih = max(0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _parse_box(text: str):
    return tuple(int(float(v)) for v in text.split()) if text else None


def make_detector(options: FaceOptions):
    if options.detector == "haar":
        return HaarDetector(options.min_face)
    return None


def extract_faces(manifest: pd.DataFrame, root: Path, options: FaceOptions, progress: bool = True):
    """Run the face stage over a manifest.

    Returns (faces, table, stats): `faces` is an (N, size, size[, 3]) uint8 array of usable
    faces, `table` the manifest plus `outcome`, `bbox`, `det_score`, `detector`, `iou`,
    `face_index` (-1 for rows without a face), and `stats` the detection summary.
    """
    detector = make_detector(options)
    start = time.perf_counter()
    faces, rows = [], []
    for row in tqdm(manifest.itertuples(index=False), total=len(manifest), desc="faces",
                    disable=not progress, unit="img"):
        record = row._asdict()
        image = cv2.imread(str(Path(root) / row.image), cv2.IMREAD_COLOR)
        record.update(outcome="corrupt", bbox="", det_score=np.nan, iou=np.nan, face_index=-1,
                      detector=options.detector)
        if image is not None:
            box = _detect_or_fallback(image, detector, options, record)
            if box is not None:
                record["face_index"] = len(faces)
                faces.append(crop_face(image, box, options))
        rows.append(record)
    table = pd.DataFrame(rows)
    stats = detection_stats(table, options.detector, time.perf_counter() - start)
    shape = (0, options.size, options.size) + (() if options.grayscale else (3,))
    array = np.stack(faces) if faces else np.zeros(shape, np.uint8)
    return array, table, stats


def _detect_or_fallback(image, detector, options: FaceOptions, record: dict):
    """Detect the face of one image, recording the outcome; returns the box to crop or None."""
    height, width = image.shape[:2]
    full = (0, 0, width, height)
    if detector is None:
        record.update(outcome="full-image", bbox=_box_text(full))
        return full
    boxes = detector(to_gray(image))
    gt = _parse_box(record.get("gt_bbox", "") or "")
    if boxes:
        box = boxes[0]
        record.update(outcome="detected", bbox=_box_text(box), det_score=float(len(boxes) == 1))
        if gt:
            record["iou"] = iou(box, gt)
        return box
    if gt:
        record["iou"] = 0.0
    if options.miss_policy == "full-image":
        record.update(outcome="full-image", bbox=_box_text(full))
        return full
    record["outcome"] = "dropped"
    return None


def _box_text(box) -> str:
    return " ".join(str(int(v)) for v in box)


def detection_stats(table: pd.DataFrame, detector: str, seconds: float) -> dict:
    """Detection rate, misses and IoU against ground truth where the dataset records it."""
    outcome = table["outcome"]
    readable = int((outcome != "corrupt").sum())
    detected = int((outcome == "detected").sum())
    ious = table["iou"].dropna()
    return {
        "detector": detector,
        "images": int(len(table)),
        "detected": detected,
        "missed": readable - detected if detector != "none" else 0,
        "corrupt": int((outcome == "corrupt").sum()),
        "fallback_full_image": int((outcome == "full-image").sum()) if detector != "none" else 0,
        "dropped": int((outcome == "dropped").sum()),
        "detection_rate": detected / readable if readable and detector != "none" else None,
        "iou": None if ious.empty else {
            "mean": float(ious.mean()),
            "median": float(ious.median()),
            "hit_rate_05": float((ious >= 0.5).mean()),
            "n": int(len(ious)),
        },
        "seconds": round(seconds, 3),
    }


def contact_sheet(faces: np.ndarray, table: pd.DataFrame, path: Path, per_row: int = 12,
                  rows: int = 4) -> Path:
    """A grid of sample faces (one per sequence where possible) for the report."""
    usable = table[table["face_index"] >= 0]
    picks = usable.drop_duplicates(["subject", "label"]).head(per_row * rows)
    tiles = [faces[i] for i in picks["face_index"]]
    if not tiles:
        tiles = [np.zeros(faces.shape[1:], np.uint8)]
    blank = np.zeros_like(tiles[0])
    tiles += [blank] * (-len(tiles) % per_row)
    grid = np.vstack([np.hstack(tiles[i:i + per_row]) for i in range(0, len(tiles), per_row)])
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), grid)
    return path


def write_outputs(faces: np.ndarray, table: pd.DataFrame, stats: dict, array_path, table_path,
                  stats_path, samples_path, dataset: str) -> None:
    """Write the face stage's artifacts (byte-deterministic for the same inputs)."""
    Path(array_path).parent.mkdir(parents=True, exist_ok=True)
    np.save(array_path, faces)
    table.to_csv(table_path, index=False, lineterminator="\n", float_format="%.6f")
    Path(stats_path).write_text(json.dumps({"dataset": dataset, **stats}, indent=2) + "\n")
    contact_sheet(faces, table, Path(samples_path))
