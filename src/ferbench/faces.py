"""Face stage: detect, align the eye line, crop with margin, resize, grayscale, normalise.

Every manifest row gets a recorded outcome (`detected`, `full-image`, `dropped`, `corrupt`),
so the report can say exactly what the detector did to the dataset. The per-face
preprocessing (`preprocess_face`: align, crop, resize, normalise) is shared with the live
application so inference sees faces prepared exactly as in training.

Alignment rotates the image about the face box's centre so that the line through the two
eye centres is horizontal. The eyes come, in this order of trust, from the manifest's own
68-point `landmarks` (iBUG order: points 36-41 and 42-47 are the two eyes), from the
detector when it locates eyes (mediapipe), or from OpenCV's Haar eye cascade in the upper
part of the face box. Without two eyes, or with an implausibly steep pair, the face is not
rotated. Each face's whole geometric preprocessing is recorded as one affine map
(`crop_transform`, original-image pixels to face-crop pixels), so the landmarks stage moves
points exactly as the pixels were moved.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from ferbench.data.images import read_image
from ferbench.resize import resize

HAAR_CASCADE = "haarcascade_frontalface_default.xml"
HAAR_EYE_CASCADE = "haarcascade_eye.xml"

#: An eye line tilted more than this is taken for a false eye pair, and the face stays as is.
MAX_ALIGN_DEGREES = 30.0

#: Share of the face box, from its top, searched for eyes: Haar's face box puts the eye centres
#: just above its middle, so its upper half cuts the lower lids off (measured on the synthetic
#: set: 0.5 finds an eye pair in 55% of faces, 0.6 in 97%).
EYE_SEARCH_HEIGHT = 0.6

#: The two eyes in iBUG 68-point order: image-left eye (the subject's right), then the other.
EYE_POINTS = (slice(36, 42), slice(42, 48))


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
    align: bool = True
    landmark_model: str = "mediapipe"
    detect_scale: float = 1.0  # Haar searches the image shrunk by this factor

    @classmethod
    def from_config(cls, block: dict) -> "FaceOptions":
        return cls(**block)


@dataclass(frozen=True)
class Detection:
    """One face a detector found; `score` and `eyes` only where the detector provides them."""

    box: tuple                  # (x, y, w, h) in image pixels
    score: float | None = None
    eyes: tuple | None = None   # ((x, y), (x, y)) eye centres, image-left eye first


def _cascade(name: str) -> cv2.CascadeClassifier:
    path = cv2.data.haarcascades + name
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"OpenCV could not load its Haar cascade {path}")
    return cascade


class HaarDetector:
    """OpenCV's Viola-Jones cascade, the detector the papers use."""

    name = "haar"

    def __init__(self, min_face: int = 40):
        self.cascade = _cascade(HAAR_CASCADE)
        self.min_face = min_face

    def __call__(self, gray: np.ndarray, sizes: tuple[int, int] | None = None
                 ) -> list[tuple[int, int, int, int]]:
        """All face boxes (x, y, w, h), largest first; `sizes` (smallest, largest side)
        narrows the search to faces of about a known size (`RoiSearch`)."""
        low, high = sizes or (self.min_face, 0)
        low = max(low, self.min_face)
        boxes = self.cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                              minSize=(low, low), maxSize=(high, high))
        boxes = [tuple(int(v) for v in b) for b in boxes]
        return sorted(boxes, key=lambda b: (-b[2] * b[3], b[0], b[1]))

    def detect(self, image: np.ndarray) -> list[Detection]:
        """The face stage's detector interface: BGR image in, detections largest first."""
        return [Detection(box) for box in self(to_gray(image))]


#: `RoiSearch` looks for a tracked face in its previous box grown by this share of its side
#: on every side (a face drifts far less than half its width between frames at 30 fps) ...
ROI_PAD = 0.5
#: ... and at sides within this factor of its previous side.
ROI_SCALE = 1.3


class RoiSearch:
    """Haar on every frame at a fraction of the cost: each frame is searched, but only around
    the faces of the previous frame (padded box, nearby sizes), and the whole frame every
    `full_every`-th frame or whenever no face is tracked, which is how a new face is found.
    A tracked face not found in its region makes that frame a full search too, so a face is
    not lost for want of a region the cascade liked (its pyramid samples a crop differently)."""

    name = "haar"

    def __init__(self, haar: HaarDetector, full_every: int):
        if full_every < 1:
            raise ValueError(f"the full-search interval must be at least 1, not {full_every}")
        self.haar = haar
        self.full_every = full_every
        self.frames = 0
        self.full_searches = 0  # scheduled ones and those a lost face forced
        self.boxes: list[tuple[int, int, int, int]] = []

    def detect(self, image: np.ndarray) -> list[Detection]:
        """This frame's faces, largest first."""
        gray = to_gray(image)
        around = None
        if self.frames % self.full_every and self.boxes:
            around = self._around(gray)
        if around is None:
            around = self.haar(gray)
            self.full_searches += 1
        self.boxes = around
        self.frames += 1
        return [Detection(box) for box in self.boxes]

    def _around(self, gray: np.ndarray) -> list[tuple[int, int, int, int]] | None:
        """The largest face near each tracked box (a box overlapping a kept one is dropped),
        or None as soon as one tracked face is not found."""
        height, width = gray.shape[:2]
        kept: list[tuple[int, int, int, int]] = []
        for x, y, w, h in self.boxes:
            pad = int(ROI_PAD * max(w, h))
            x0, y0 = max(0, x - pad), max(0, y - pad)
            region = gray[y0:min(height, y + h + pad), x0:min(width, x + w + pad)]
            sizes = (int(w / ROI_SCALE), int(math.ceil(w * ROI_SCALE)))
            found = self.haar(region, sizes)
            if not found:
                return None
            box = (found[0][0] + x0, found[0][1] + y0, *found[0][2:])
            if all(iou(box, other) < 0.5 for other in kept):
                kept.append(box)
        return sorted(kept, key=lambda b: (-b[2] * b[3], b[0], b[1]))


class HaarEyes:
    """OpenCV's eye cascade, searched in the upper part of a face box."""

    def __init__(self):
        self.cascade = _cascade(HAAR_EYE_CASCADE)

    def __call__(self, image: np.ndarray, box) -> tuple | None:
        """Centres of the largest eye in each (left/right) half of the box's upper part, or
        None. Only that part is turned grey, not the whole (colour) image."""
        x, y, w, h = (int(v) for v in box)
        x0, y0 = max(0, x), max(0, y)
        upper = image[y0:max(y0, y + int(h * EYE_SEARCH_HEIGHT)), x0:max(x0, x + w)]
        if min(upper.shape[:2]) < 8:
            return None
        upper = to_gray(upper)
        found = self.cascade.detectMultiScale(upper, scaleFactor=1.1, minNeighbors=3,
                                              minSize=(max(6, w // 10),) * 2,
                                              maxSize=(max(7, w // 2),) * 2)
        centre_x = x + w / 2.0
        halves = ([], [])
        for ex, ey, ew, eh in found:
            centre = (x0 + ex + ew / 2.0, y0 + ey + eh / 2.0)
            halves[int(centre[0] >= centre_x)].append((-int(ew) * int(eh), centre))
        if not all(halves):
            return None
        return tuple(min(half)[1] for half in halves)


def to_gray(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def normalise(gray: np.ndarray, method: str) -> np.ndarray:
    """Illumination normalisation: CLAHE or global histogram equalisation."""
    if method == "clahe":
        return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4)).apply(gray)
    if method == "equalize":
        return cv2.equalizeHist(gray)
    return gray


def crop_rect(shape: tuple, box, margin: float) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the square around `box` grown by `margin`, clipped to the image."""
    height, width = shape[:2]
    x, y, w, h = box
    side = max(w, h) * (1.0 + 2.0 * margin)
    cx, cy = x + w / 2.0, y + h / 2.0
    x0, y0 = int(round(max(0.0, cx - side / 2))), int(round(max(0.0, cy - side / 2)))
    x1, y1 = int(round(min(width, cx + side / 2))), int(round(min(height, cy + side / 2)))
    return x0, y0, x1, y1


def _rotation(box, angle: float) -> np.ndarray:
    """2x3 map that turns the image by `angle` degrees (counter-clockwise) about the box centre."""
    x, y, w, h = box
    return cv2.getRotationMatrix2D((x + w / 2.0, y + h / 2.0), angle, 1.0)


def crop_face(image: np.ndarray, box, options: FaceOptions, angle: float = 0.0) -> np.ndarray:
    """Square crop around `box` grown by `margin`, clipped to the image, resized and normalised.

    A non-zero `angle` first turns the image about the box centre (only the cropped region
    is computed); the crop rectangle is the same in the turned image.
    """
    x0, y0, x1, y1 = crop_rect(image.shape, box, options.margin)
    if angle:
        shifted = _rotation(box, angle)
        shifted[:, 2] -= (x0, y0)
        crop = cv2.warpAffine(image, shifted, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
    else:
        crop = image[y0:y1, x0:x1]
    crop = resize(crop, options.size)  # area to shrink, bicubic to enlarge a small face
    if options.grayscale:
        crop = normalise(to_gray(crop), options.normalise)
    return crop


def crop_transform(shape: tuple, box, options: FaceOptions, angle: float = 0.0) -> np.ndarray:
    """2x3 affine map from original-image pixels to the pixels of `crop_face`'s output.

    Pixel centres sit at integer coordinates (OpenCV's convention), so the resize maps
    x to (x - x0 + 0.5) * size / (x1 - x0) - 0.5.
    """
    x0, y0, x1, y1 = crop_rect(shape, box, options.margin)
    sx, sy = options.size / (x1 - x0), options.size / (y1 - y0)
    scale = np.array([[sx, 0.0, (0.5 - x0) * sx - 0.5], [0.0, sy, (0.5 - y0) * sy - 0.5],
                      [0.0, 0.0, 1.0]])
    rotation = np.vstack([_rotation(box, angle), [0.0, 0.0, 1.0]])
    return (scale @ rotation)[:2]


def apply_transform(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points (..., 2) through a 2x3 affine map."""
    return points @ transform[:, :2].T + transform[:, 2]


def eye_line_angle(eyes) -> float:
    """Degrees the line from the image-left eye to the other one descends to the right."""
    (lx, ly), (rx, ry) = eyes
    return math.degrees(math.atan2(ry - ly, rx - lx))


def parse_landmarks(text) -> np.ndarray | None:
    """(68, 2) points from the manifest's `x0 y0 ... x67 y67` text; None where absent."""
    values = str(text or "").split()
    return np.array(values, float).reshape(68, 2) if len(values) == 136 else None


def landmark_eyes(points: np.ndarray) -> tuple:
    """Eye centres (image-left eye first) as the means of the iBUG eye contours."""
    return tuple(tuple(points[part].mean(0)) for part in EYE_POINTS)


def iou(a, b) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0, min(ax1, bx1) - max(a[0], b[0]))
    ih = max(0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def parse_box(text: str):
    """(x, y, w, h) from the tables' `x y w h` text; None where empty."""
    return tuple(int(float(v)) for v in text.split()) if text else None


class ScaledDetector:
    """A detector that searches the image shrunk by `scale` (area interpolation): fewer pixels
    to search, boxes and eyes mapped back to the image's pixels, so every crop is still cut
    from the full-resolution image. Anything else is the wrapped detector's (e.g. RoiSearch's
    `full_searches`)."""

    def __init__(self, detector, scale: float):
        if not 0.0 < scale <= 1.0:
            raise ValueError(f"the detection scale must lie in (0, 1], not {scale}")
        self.detector, self.scale = detector, scale

    def __getattr__(self, name: str):
        return getattr(self.detector, name)

    def detect(self, image: np.ndarray) -> list[Detection]:
        scale = self.scale
        small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        return [Detection(tuple(int(round(v / scale)) for v in found.box), found.score,
                          None if found.eyes is None else
                          tuple((x / scale, y / scale) for x, y in found.eyes))
                for found in self.detector.detect(small)]


def make_detector(options: FaceOptions, full_search_every: int = 1):
    """A context manager that yields the configured detector (None for `none`): searching
    the image shrunk by `detect_scale` where it is below 1, and with `full_search_every`
    M > 1 (Haar only) around the previous image's faces, the whole image every M-th
    (RoiSearch, on the shrunk image)."""
    min_face = max(1, round(options.min_face * options.detect_scale))
    if options.detector == "haar":
        context = contextlib.nullcontext(HaarDetector(min_face))
    elif options.detector == "mediapipe":
        from ferbench import mediapipe_client

        context = mediapipe_client.MediapipeWorker(min_face)
    else:
        return contextlib.nullcontext(None)
    return _search(context, options.detect_scale, full_search_every)


@contextlib.contextmanager
def _search(context, scale: float, full_search_every: int):
    with context as detector:
        if full_search_every != 1:
            detector = RoiSearch(detector, full_search_every)
        yield detector if scale == 1.0 else ScaledDetector(detector, scale)


def worker_detections(found: list[dict], min_face: int) -> list[Detection]:
    """The mediapipe worker's faces (box, score, eyes) as Detections of at least `min_face`."""
    return [Detection(tuple(f["box"]), f["score"], tuple(map(tuple, f["eyes"])))
            for f in found if min(f["box"][2:]) >= min_face]


class RecordedDetections:
    """BlazeFace's faces per image as the `mediapipe_detect` rule wrote them (JSON Lines), so
    the face stage runs in the main environment and MediaPipe in its own."""

    def __init__(self, path: str | Path, min_face: int = 0):
        self.min_face = min_face
        with open(path) as lines:
            self.faces = {row["image"]: row["faces"] or [] for row in map(json.loads, lines)}

    def detect(self, image: str) -> list[Detection]:
        if image not in self.faces:
            raise KeyError(f"{image}: not in the recorded detections (rerun mediapipe_detect)")
        return worker_detections(self.faces[image], self.min_face)


#: Rows a face-stage worker takes at a time: large enough that handing rows out costs little
#: next to detecting them, small enough that both workers stay busy to the end.
CHUNK_ROWS = 64


def extract_faces(manifest: pd.DataFrame, root: Path, options: FaceOptions, progress: bool = True,
                  workers: int = 1, recorded: "RecordedDetections | None" = None):
    """Run the face stage over a manifest.

    Returns (faces, table, stats): `faces` is an (N, size, size[, 3]) uint8 array of usable
    faces, `table` the manifest plus `outcome`, `bbox`, `det_score`, `detector`, `iou`,
    `aligned`, `align_angle`, `align_source`, `crop_transform` (six numbers, row-major 2x3,
    original-image to face-crop pixels), `face_index` (-1 for rows without a face), and
    `stats` the detection summary.

    With `workers` > 1 a Haar stage splits the rows into chunks over that many processes;
    every image is prepared on its own, so the outputs are those of one process, byte for
    byte. The faces go straight into one preallocated array, never into a list of them.
    `recorded`: the detector's faces per image, found beforehand in its own environment (the
    workflow's `mediapipe_detect` rule), used instead of running the detector here.
    """
    start = time.perf_counter()
    shape = (options.size, options.size) + (() if options.grayscale else (3,))
    array = np.empty((len(manifest),) + shape, np.uint8)
    rows, count = [], 0
    chunks = [[row._asdict() for row in manifest.iloc[i:i + CHUNK_ROWS].itertuples(index=False)]
              for i in range(0, len(manifest), CHUNK_ROWS)]
    with tqdm(total=len(manifest), desc="faces", disable=not progress, unit="img") as bar, \
            _chunk_results(chunks, Path(root), options, workers, recorded) as results:
        for records, crops in results:
            for record in records:
                if record["face_index"] >= 0:
                    array[count] = crops[record["face_index"]]
                    record["face_index"] = count
                    count += 1
            rows += records
            bar.update(len(records))
    table = pd.DataFrame(rows, columns=list(dict.fromkeys([*manifest.columns, *STAGE_COLUMNS])))
    stats = detection_stats(table, options.detector, time.perf_counter() - start)
    return array[:count], table, stats


#: Columns the face stage adds to the manifest.
STAGE_COLUMNS = ("outcome", "bbox", "det_score", "iou", "face_index", "detector", "aligned",
                 "align_angle", "align_source", "crop_transform")


@contextlib.contextmanager
def _chunk_results(chunks: list, root: Path, options: FaceOptions, workers: int, recorded=None):
    """(records, crops) of each chunk, in order: in this process, or from a pool of forked
    workers (one OpenCV thread each) where `workers` > 1 and the detector is Haar (mediapipe
    already runs in a process of its own)."""
    workers = min(workers, len(chunks))
    if workers <= 1 or options.detector != "haar":
        with _ChunkWorker(root, options, recorded) as worker:
            yield map(worker, chunks)
        return
    import multiprocessing

    # fork, not spawn: a spawned worker would re-run the Snakemake script that is __main__.
    # OpenCV's thread pool is set to one thread before the fork: a forked child inherits a
    # pool without its threads, and reconfiguring or using it there hangs.
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with multiprocessing.get_context("fork").Pool(workers, _start_worker,
                                                      (root, options)) as pool:
            yield pool.imap(_run_chunk, chunks)
    finally:
        cv2.setNumThreads(threads)


class _ChunkWorker:
    """Detector and eye finder of one process, and the face stage of a chunk of rows."""

    def __init__(self, root: Path, options: FaceOptions, recorded=None):
        self.root, self.options, self.recorded = root, options, recorded
        self.eye_finder = make_eye_finder(options)
        self._context = contextlib.nullcontext(None) if recorded else make_detector(options)

    def __enter__(self) -> "_ChunkWorker":
        self.detector = self._context.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._context.__exit__(*exc)

    def __call__(self, records: list[dict]) -> tuple[list[dict], list[np.ndarray]]:
        """The records completed; face_index counts within the chunk's crops."""
        crops = []
        for record in records:
            crop = self._one(record)
            record["face_index"] = -1 if crop is None else len(crops)
            if crop is not None:
                crops.append(crop)
        return records, crops

    def _one(self, record: dict) -> np.ndarray | None:
        options = self.options
        image = read_image(self.root, record["image"])
        record.update(outcome="corrupt", bbox="", det_score=np.nan, iou=np.nan,
                      detector=options.detector, aligned=False, align_angle=0.0,
                      align_source="", crop_transform="")
        if image is None:
            return None
        found = _detect_or_fallback(image, self._faces(image, record), options, record)
        if found is None:
            return None
        face = preprocess_face(image, found, options, self.eye_finder,
                               parse_landmarks(record.get("landmarks")))
        if face.align_source:
            record.update(aligned=True, align_angle=face.angle, align_source=face.align_source)
        record["crop_transform"] = _numbers_text(crop_transform(image.shape, found.box, options,
                                                                face.angle))
        return face.crop

    def _faces(self, image: np.ndarray, record: dict) -> list[Detection] | None:
        """The faces found in a record's image; None where the stage has no detector."""
        if self.recorded is not None:
            return self.recorded.detect(record["image"])
        return None if self.detector is None else self.detector.detect(image)


_WORKER: _ChunkWorker | None = None


def _start_worker(root: Path, options: FaceOptions) -> None:
    """Pool initializer: the worker's detector and eye finder."""
    global _WORKER
    _WORKER = _ChunkWorker(root, options).__enter__()  # Haar only: nothing to close


def _run_chunk(records: list[dict]) -> tuple[list[dict], list[np.ndarray]]:
    return _WORKER(records)


@dataclass(frozen=True)
class PreparedFace:
    """A face as the models see it, and the rotation that levelled its eyes."""

    crop: np.ndarray            # (size, size[, 3]) uint8
    angle: float = 0.0          # degrees turned; 0 when not aligned
    align_source: str = ""      # where the eyes came from; empty when not aligned


def make_eye_finder(options: FaceOptions) -> HaarEyes | None:
    """The eye finder alignment falls back on (None when alignment is off)."""
    return HaarEyes() if options.align else None


def preprocess_face(image: np.ndarray, found: Detection, options: FaceOptions, eye_finder,
                    landmarks: np.ndarray | None = None) -> PreparedFace:
    """Align, crop, resize and normalise one detected face: the one place both the face
    stage and `ferbench live` prepare faces, so inference sees what training saw."""
    angle, source = align_angle(image, found, eye_finder, landmarks)
    return PreparedFace(crop_face(image, found.box, options, angle), angle, source)


def align_angle(image: np.ndarray, found: Detection, eye_finder,
                landmarks: np.ndarray | None = None) -> tuple[float, str]:
    """The rotation (degrees) that levels the eye line and where the eyes came from
    (68-point landmarks, the detector, Haar eyes); (0.0, "") when not aligned."""
    if eye_finder is None:
        return 0.0, ""
    if landmarks is not None:
        eyes, source = landmark_eyes(landmarks), "landmarks"
    elif found.eyes is not None:
        eyes, source = found.eyes, "detector"
    else:
        eyes, source = eye_finder(image, found.box), "haar-eyes"
    if eyes is None:
        return 0.0, ""
    angle = eye_line_angle(eyes)
    if abs(angle) > MAX_ALIGN_DEGREES:
        return 0.0, ""
    return angle, source


def _detect_or_fallback(image, found: list | None, options: FaceOptions, record: dict):
    """Choose the face of one image from what was `found` (None: no detector), recording the
    outcome; returns the Detection to crop (the whole image on a miss under `full-image`)
    or None."""
    height, width = image.shape[:2]
    full = Detection((0, 0, width, height))
    if found is None:
        record.update(outcome="full-image", bbox=_box_text(full.box))
        return full
    gt = parse_box(record.get("gt_bbox", "") or "")
    if found:
        best = found[0]
        score = best.score if best.score is not None else float(len(found) == 1)
        record.update(outcome="detected", bbox=_box_text(best.box), det_score=score)
        if gt:
            record["iou"] = iou(best.box, gt)
        return best
    if gt:
        record["iou"] = 0.0
    if options.miss_policy == "full-image":
        record.update(outcome="full-image", bbox=_box_text(full.box))
        return full
    record["outcome"] = "dropped"
    return None


def _box_text(box) -> str:
    return " ".join(str(int(v)) for v in box)


def _numbers_text(values: np.ndarray) -> str:
    """Floats as text that survives a CSV round trip to well below a pixel."""
    return " ".join(f"{v:.9g}" for v in np.asarray(values, float).ravel())


def detection_stats(table: pd.DataFrame, detector: str, seconds: float) -> dict:
    """Detection rate, misses and IoU against ground truth where the dataset records it."""
    outcome = table["outcome"]
    readable = int((outcome != "corrupt").sum())
    detected = int((outcome == "detected").sum())
    ious = table["iou"].dropna()
    aligned = table[table["aligned"].astype(bool)]
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
        "aligned": int(len(aligned)),
        "aligned_by": {str(k): int(v) for k, v in
                       sorted(aligned["align_source"].value_counts().items())},
        "align_angle_abs_mean": float(aligned["align_angle"].abs().mean()) if len(aligned)
        else None,
        "seconds": round(seconds, 3),
    }


def contact_sheet(faces: np.ndarray, table: pd.DataFrame, path: Path, per_row: int = 12,
                  rows: int = 4) -> Path:
    """A grid of sample faces (one per sequence where possible) for the report."""
    tiles = [faces[i] for i in sample_faces(table, per_row * rows)]
    return write_grid(tiles or [np.zeros(faces.shape[1:], np.uint8)], path, per_row)


def sample_faces(table: pd.DataFrame, count: int) -> list[int]:
    """Face indices of up to `count` faces, one per (subject, label) where possible."""
    usable = table[table["face_index"] >= 0]
    return [int(i) for i in usable.drop_duplicates(["subject", "label"]).head(count)["face_index"]]


def write_grid(tiles: list[np.ndarray], path: Path, per_row: int) -> Path:
    """Write equally sized tiles as a PNG grid, rows filled up with black tiles."""
    blank = np.zeros_like(tiles[0])
    tiles = tiles + [blank] * (-len(tiles) % per_row)
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
