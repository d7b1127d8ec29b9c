"""`ferbench live`: expressions of every face in a webcam stream, a video or an image folder.

The MobileNet-CL paper's real-time system (§5.2): detect all faces of a frame with Haar, prepare
each one exactly as the training faces were (`faces.preprocess_face` with the face options the
model's `model.pt` or its MLflow model's metadata records, then `train.Split`/`train.predict`
for resizing, scaling to [-1, 1] and the softmax), classify the frame's faces as one batch,
and time the three stages the paper reports: detection ms/frame, preprocessing ms/face and
classification ms/face.

Detection may run on a downscaled copy of the frame (`detect_scale`); the boxes are mapped back
and every crop is cut from the full-resolution frame, so only the detector sees fewer pixels.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ferbench import faces, models
from ferbench import train as train_mod
from ferbench.data.images import IMAGE_SUFFIXES, folder_images

#: The annotated video: MPEG-4 part 2 is the codec the headless OpenCV wheel can write here
#: (its FFmpeg has no usable H.264 encoder: `avc1` fails to open).
VIDEO_NAME, VIDEO_FOURCC = "annotated.mp4", "mp4v"

#: Frame rate written for sources that do not state one (image folders, some webcams).
DEFAULT_FPS = 25.0

#: The astronaut photo's face: Haar's box on `skimage.data.astronaut()`, checked by eye, and
#: the head-and-shoulders patch around it that synthetic frames paste.
ASTRONAUT_FACE = (177, 66, 95, 95)
ASTRONAUT_PATCH = (145, 10, 160, 190)  # x, y, w, h


@dataclass
class Source:
    """Frames of a webcam, a video file or an image folder; `count` is None when unknown."""

    frames: Iterator[np.ndarray]
    count: int | None
    fps: float
    name: str
    close: Callable[[], None] = lambda: None


def open_source(spec: str, fps: float | None = None) -> Source:
    """A webcam index ("0"), a video file or a folder of images."""
    if spec.isdigit():
        return _capture_source(cv2.VideoCapture(int(spec)), f"webcam {spec}", fps, webcam=True)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"no such video, image folder or webcam index: {spec}")
    if path.is_dir():
        images = folder_images(path)
        if not images:
            raise ValueError(f"{path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return Source(_read_images(images), len(images), fps or DEFAULT_FPS, str(path))
    return _capture_source(cv2.VideoCapture(str(path)), str(path), fps, webcam=False)


def _capture_source(capture: cv2.VideoCapture, name: str, fps: float | None,
                    webcam: bool) -> Source:
    ok, first = capture.read() if capture.isOpened() else (False, None)
    if not ok:
        capture.release()
        raise ValueError(f"cannot read {name}: OpenCV could not decode a frame from it")
    count = None if webcam else int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None

    def frames():
        frame = first
        while frame is not None:
            yield frame
            ok, frame = capture.read()
            frame = frame if ok else None

    stated = capture.get(cv2.CAP_PROP_FPS)
    return Source(frames(), count, fps or (stated if stated > 0 else DEFAULT_FPS), name,
                  capture.release)


def _read_images(paths: list[Path]) -> Iterator[np.ndarray]:
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            tqdm.write(f"skipping unreadable image {path}", file=sys.stderr)
            continue
        yield image


# -- the model --------------------------------------------------------------------------------

#: Prefixes of the MLflow model URIs a model may be given as, besides a model.pt path.
MODEL_URI_PREFIXES = ("runs:/", "models:/")


def fetch_mlflow_model(uri: str, tracking_uri: str | None, device: torch.device):
    """(network, model.pt record) of the MLflow model at `uri` (`runs:/<run id>/model`,
    `models:/<name>/<version>`): its torch.export graph, loaded by mlflow.pytorch (which
    refuses pickled code), gives the weights, and its metadata the record."""
    import tempfile

    import mlflow.artifacts
    import mlflow.pytorch
    from mlflow.models import Model

    from ferbench import tracking
    from ferbench.jobs import build_model

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    store = tracking.resolve_uri(tracking_uri or "", "results")
    database = Path(store.removeprefix("sqlite:///"))
    if store.startswith("sqlite:///") and not database.is_file():  # MLflow would create one
        raise FileNotFoundError(f"no MLflow store {database} (set --tracking-uri)")
    tracking.use_store(store)  # a registered version resolves through the process's store
    with tempfile.TemporaryDirectory() as folder:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=folder,
                                                        tracking_uri=store, registry_uri=store)
            record = (Model.load(local).metadata or {}).get(tracking.METADATA_KEY)
            if record is None:
                raise ValueError("it is not a ferbench model (no 'ferbench' metadata)")
            # Refused here too, in case MLFLOW_ALLOW_PICKLE_DESERIALIZATION lets MLflow load it.
            if not (Path(local) / "data" / "model.pt2").is_file():
                raise ValueError("refusing to load it: its weights are pickled, not a "
                                 "torch.export graph, and unpickling could run code")
            exported = mlflow.pytorch.load_model(local)
        except Exception as exc:  # mlflow raises its own types for unknown runs and models
            raise ValueError(f"cannot load MLflow model {uri} from {store}: "
                             f"{(str(exc).splitlines() or [type(exc).__name__])[0]}") from None
    return build_model(record, exported.state_dict(), device), record


def write_untrained_model(path, model: str, labels: list[str], face_options: dict,
                          seed: int = 0, **hyperparameters) -> Path:
    """A randomly initialised `model.pt` in the train stage's format, for timing and tests."""
    from ferbench.jobs import save_model

    torch.manual_seed(seed)
    spec = models.get(model)
    hp = spec.hyperparameters(hyperparameters)
    return save_model(path, model, labels, hp, spec.build(len(labels), hp).state_dict(),
                      face_options)


@dataclass
class LiveModel:
    network: torch.nn.Module
    labels: list[str]
    input_size: int
    face_options: faces.FaceOptions
    name: str
    test_flip: bool = False  # the recipe's: a face and its mirror vote, as when evaluated


def load_live_model(model: str | Path, device: torch.device,
                    tracking_uri: str | None = None) -> LiveModel:
    """A trained model with the face options its training faces were prepared with, from a
    `model.pt` path or an MLflow model URI (MODEL_URI_PREFIXES) on `tracking_uri`."""
    from ferbench.jobs import load_model

    if str(model).startswith(MODEL_URI_PREFIXES):
        network, saved = fetch_mlflow_model(str(model), tracking_uri, device)
    elif not Path(model).is_file():
        raise FileNotFoundError(f"no model file {model} (the train stage writes model.pt; "
                                f"or give an MLflow {' or '.join(MODEL_URI_PREFIXES)} URI)")
    else:
        network, saved = load_model(model, device)
    if not saved.get("faces"):
        raise ValueError(f"{model} records no face-stage options ('faces'): it predates them; "
                         "retrain it with the current workflow")
    extra = models.get(saved["model"]).extra_channels
    if extra:
        raise ValueError(f"model {saved['model']} also takes {', '.join(extra)} input channels, "
                         "which live cannot compute; pick a face-only model")
    return LiveModel(network, list(saved["labels"]), int(saved["input_size"]),
                     faces.FaceOptions.from_config(saved["faces"]), saved["model"],
                     bool(saved["hyperparameters"].get("test_flip", False)))


# -- recognition -------------------------------------------------------------------------------

@dataclass
class FrameResult:
    """One frame's faces: boxes (x, y, w, h) in frame pixels, (faces, classes) probabilities,
    and the seconds each stage took."""

    boxes: list[tuple[int, int, int, int]]
    probabilities: np.ndarray
    detect_s: float
    preprocess_s: float
    classify_s: float


class Recognizer:
    """Detect, prepare and classify every face of a frame, timing each stage.

    With `detect_every` N > 1 the detector runs on every N-th frame only and the frames in
    between reuse its boxes (faces move little in 1/10 s at 30 fps); every frame's faces are
    still cropped and classified. N = 1 is the paper's system.

    With `full_search_every` M > 1 (Haar only) the detector still searches every frame, but
    only around the previous frame's faces, and the whole frame every M-th frame
    (`faces.RoiSearch`); M = 1 searches the whole of every frame.
    """

    def __init__(self, live_model: LiveModel, device: torch.device,
                 detect_scale: float | None = None, detect_every: int = 1,
                 full_search_every: int = 1):
        if detect_scale is None:  # as the face stage searched the model's training images
            detect_scale = live_model.face_options.detect_scale
        if not 0.0 < detect_scale <= 1.0:
            raise ValueError(f"--detect-scale must lie in (0, 1], not {detect_scale}")
        if detect_every < 1:
            raise ValueError(f"--detect-every must be at least 1, not {detect_every}")
        if full_search_every != 1 and live_model.face_options.detector == "mediapipe":
            raise ValueError("--full-search-every searches around the previous faces with Haar "
                             "only; this model's faces were found with mediapipe")
        self.model = live_model
        self.device = device
        self.detect_scale = detect_scale
        self.detect_every = detect_every
        self._frames_seen = 0
        self._found: list[faces.Detection] = []
        options = live_model.face_options
        # Models trained on pre-cropped faces (detector `none`) still need faces found in a
        # frame.
        self.eye_finder = faces.make_eye_finder(options)
        self._detector_context = faces.make_detector(
            replace(options, detect_scale=detect_scale,
                    detector="haar" if options.detector == "none" else options.detector),
            full_search_every)
        self.detector = self._detector_context.__enter__()
        self.full_search_every = full_search_every
        self._warm_up()

    def __enter__(self) -> "Recognizer":
        return self

    def __exit__(self, *exc) -> None:
        """Stops the detector's worker process where it has one (mediapipe)."""
        self._detector_context.__exit__(*exc)

    def _warm_up(self) -> None:
        """One untimed pass: the first forward call pays for lazy initialisation."""
        side = self.model.face_options.size
        self._classify(np.zeros((1, side, side), np.uint8))

    def _classify(self, crops: np.ndarray) -> np.ndarray:
        split = train_mod.Split.from_arrays(crops, np.zeros(len(crops), int),
                                            self.model.input_size)
        return train_mod.predict(self.model.network, split, self.device,
                                 flip=self.model.test_flip).numpy()

    def __call__(self, frame: np.ndarray) -> FrameResult:
        start = time.perf_counter()
        if self._frames_seen % self.detect_every == 0:
            self._found = self.detector.detect(frame)
        self._frames_seen += 1
        found = self._found
        detected = time.perf_counter()
        crops = [faces.preprocess_face(frame, face, self.model.face_options, self.eye_finder).crop
                 for face in found]
        prepared = time.perf_counter()
        probabilities = (self._classify(np.stack(crops)) if crops
                         else np.zeros((0, len(self.model.labels)), np.float32))
        classified = time.perf_counter()
        return FrameResult([tuple(int(v) for v in face.box) for face in found], probabilities,
                           detected - start, prepared - detected, classified - prepared)


# -- outputs -----------------------------------------------------------------------------------

#: BGR colour of each canonical label's box.
LABEL_COLOURS = {"neutral": (200, 200, 200), "anger": (0, 0, 230), "contempt": (120, 0, 160),
                 "disgust": (0, 140, 0), "fear": (170, 60, 200), "happiness": (0, 215, 255),
                 "sadness": (200, 90, 0), "surprise": (255, 200, 0)}


def draw(frame: np.ndarray, result: FrameResult, labels: list[str]) -> np.ndarray:
    """The frame with each face's box, label and probability drawn in."""
    out = frame.copy()
    for box, probs in zip(result.boxes, result.probabilities):
        x, y, w, h = box
        best = int(probs.argmax())
        colour = LABEL_COLOURS.get(labels[best], (255, 255, 255))
        cv2.rectangle(out, (x, y), (x + w, y + h), colour, 2)
        text = f"{labels[best]} {probs[best]:.2f}"
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        top = max(0, y - th - 6)
        cv2.rectangle(out, (x, top), (x + tw + 4, top + th + 6), colour, -1)
        cv2.putText(out, text, (x + 2, top + th + 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return out


class FaceLog:
    """The per-face log, one row per detected face, as JSON Lines and CSV."""

    def __init__(self, out_dir: Path, labels: list[str]):
        self.labels = labels
        self.jsonl = open(out_dir / "faces.jsonl", "w")
        self.csv_file = open(out_dir / "faces.csv", "w", newline="")
        self.csv = csv.writer(self.csv_file, lineterminator="\n")
        self.csv.writerow(["frame", "face", "x", "y", "w", "h", "label", "probability",
                           *(f"p_{label}" for label in labels), "detect_ms", "preprocess_ms",
                           "classify_ms"])

    def write(self, index: int, result: FrameResult) -> None:
        """Stage times are per frame for detection and per face (the frame's mean) otherwise."""
        count = len(result.boxes)
        timings = {"detect_ms": round(result.detect_s * 1000, 3),
                   "preprocess_ms": round(result.preprocess_s * 1000 / max(1, count), 3),
                   "classify_ms": round(result.classify_s * 1000 / max(1, count), 3)}
        for face, (box, probs) in enumerate(zip(result.boxes, result.probabilities)):
            best = int(probs.argmax())
            rounded = [round(float(p), 6) for p in probs]
            self.jsonl.write(json.dumps({"frame": index, "face": face, "box": list(box),
                                         "label": self.labels[best],
                                         "probability": rounded[best],
                                         "probabilities": dict(zip(self.labels, rounded)),
                                         **timings}) + "\n")
            self.csv.writerow([index, face, *box, self.labels[best], rounded[best], *rounded,
                               *timings.values()])

    def close(self) -> None:
        self.jsonl.close()
        self.csv_file.close()


@dataclass
class Timings:
    """Running totals for the paper's breakdown."""

    frames: int = 0
    faces: int = 0
    detect_s: float = 0.0
    preprocess_s: float = 0.0
    classify_s: float = 0.0

    def add(self, result: FrameResult) -> None:
        self.frames += 1
        self.faces += len(result.boxes)
        self.detect_s += result.detect_s
        self.preprocess_s += result.preprocess_s
        self.classify_s += result.classify_s

    def summary(self, wall_s: float) -> dict:
        """Detection per frame; preprocessing and classification per face (the paper's units),
        and whole-loop frames per second including reading, drawing and writing."""
        per_face = max(1, self.faces)
        recognition_s = self.detect_s + self.preprocess_s + self.classify_s
        return {
            "frames": self.frames,
            "faces": self.faces,
            "faces_per_frame_mean": self.faces / max(1, self.frames),
            "detection_ms_per_frame": 1000 * self.detect_s / max(1, self.frames),
            "preprocessing_ms_per_face": 1000 * self.preprocess_s / per_face,
            "classification_ms_per_face": 1000 * self.classify_s / per_face,
            "classification_ms_per_frame": 1000 * self.classify_s / max(1, self.frames),
            "recognition_fps": self.frames / recognition_s if recognition_s else None,
            "end_to_end_fps": self.frames / wall_s if wall_s else None,
            "wall_s": wall_s,
        }


def format_timings(summary: dict) -> str:
    """The timing breakdown as the lines `ferbench live` prints."""
    fps = summary["end_to_end_fps"]
    return "\n".join([
        f"frames {summary['frames']}, faces {summary['faces']} "
        f"({summary['faces_per_frame_mean']:.2f} per frame)",
        f"detection       {summary['detection_ms_per_frame']:8.2f} ms/frame",
        f"preprocessing   {summary['preprocessing_ms_per_face']:8.2f} ms/face",
        f"classification  {summary['classification_ms_per_face']:8.2f} ms/face",
        f"end to end      {fps:8.1f} frames/s" if fps else "end to end           n/a",
    ])


def display_available() -> bool:
    """Whether `--display` can open a window: a display, and an OpenCV built with a GUI
    (the headless wheel this project pins has none)."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                 or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        cv2.namedWindow("ferbench live")
    except cv2.error:
        return False
    return True


def run(source: Source, recognizer: Recognizer, out_dir: Path, display: bool = False,
        max_frames: int | None = None, progress: bool = True) -> dict:
    """Recognise every frame of `source`; write the annotated video, the per-face logs and
    `summary.json` into `out_dir`; return the summary. Ctrl-C ends a webcam run cleanly."""
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = recognizer.model.labels
    log = FaceLog(out_dir, labels)
    timings = Timings()
    writer, size = None, None
    total = min(filter(None, (source.count, max_frames)), default=None)
    bar = tqdm(total=total, desc="live", unit="frame", disable=not progress or total is None)
    start = time.perf_counter()
    try:
        for frame in source.frames:
            if max_frames is not None and timings.frames >= max_frames:
                break
            result = recognizer(frame)
            log.write(timings.frames, result)
            timings.add(result)
            annotated = draw(frame, result, labels)
            if writer is None:
                size = (annotated.shape[1], annotated.shape[0])
                writer = _video_writer(out_dir / VIDEO_NAME, source.fps, size)
            if (annotated.shape[1], annotated.shape[0]) != size:  # image folders of mixed sizes
                annotated = cv2.resize(annotated, size, interpolation=cv2.INTER_AREA)
            writer.write(annotated)
            if display:
                cv2.imshow("ferbench live", annotated)
                if cv2.waitKey(1) & 0xFF == ord("q"):
                    break
            bar.update(1)
    except KeyboardInterrupt:
        pass
    finally:
        wall_s = time.perf_counter() - start
        bar.close()
        source.close()
        log.close()
        if writer is not None:
            writer.release()
        if display:
            cv2.destroyAllWindows()
    summary = {"source": source.name, "model": recognizer.model.name,
               "device": str(recognizer.device), "detect_scale": recognizer.detect_scale,
               "detect_every": recognizer.detect_every,
               "full_search_every": recognizer.full_search_every,
               # whole-frame searches, those a lost face forced included (None: every search)
               "full_searches": getattr(recognizer.detector, "full_searches", None),
               "torch_threads": torch.get_num_threads(), "video": VIDEO_NAME,
               **timings.summary(wall_s)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _video_writer(path: Path, fps: float, size: tuple[int, int]) -> cv2.VideoWriter:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*VIDEO_FOURCC), fps, size)
    if not writer.isOpened():
        raise ValueError(f"OpenCV cannot write {path} with codec {VIDEO_FOURCC}")
    return writer


# -- synthetic test videos ----------------------------------------------------------------------

@dataclass(frozen=True)
class SyntheticFace:
    """Where one pasted face goes: its patch's top-left corner at rest, scale and mirroring."""

    origin: tuple[float, float]
    scale: float
    mirrored: bool
    phase: float


def astronaut_patch() -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The astronaut's head as a BGR patch, and her face box inside it."""
    from skimage import data

    photo = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    px, py, pw, ph = ASTRONAUT_PATCH
    fx, fy, fw, fh = ASTRONAUT_FACE
    return photo[py:py + ph, px:px + pw].copy(), (fx - px, fy - py, fw, fh)


def face_layout(count: int, size: tuple[int, int], seed: int = 0) -> list[SyntheticFace]:
    """`count` faces in a grid of up to four columns, one per cell, each shrunk by up to 10%."""
    rng = np.random.default_rng(seed)
    width, height = size
    pw, ph = ASTRONAUT_PATCH[2:]
    columns = min(count, 4)
    rows = math.ceil(count / columns)
    cell_w, cell_h = width / columns, height / rows
    fit = min(1.0, 0.85 * cell_w / pw, 0.85 * cell_h / ph)
    layout = []
    for i in range(count):
        scale = fit * rng.uniform(0.9, 1.0)
        col, row = i % columns, i // columns
        origin = (col * cell_w + (cell_w - pw * scale) / 2,
                  row * cell_h + (cell_h - ph * scale) / 2)
        layout.append(SyntheticFace(origin, scale, mirrored=bool(i % 2),
                                    phase=float(rng.uniform(0, 2 * math.pi))))
    return layout


def synthetic_frames(count: int, frames: int, size: tuple[int, int] = (640, 480),
                     seed: int = 0) -> Iterator[tuple[np.ndarray, list[tuple[int, int, int, int]]]]:
    """Frames (BGR) with `count` copies of a real face drifting a few pixels, each with the
    true face boxes (x, y, w, h) of that frame."""
    patch, face_box = astronaut_patch()
    layout = face_layout(count, size, seed)
    width, height = size
    rng = np.random.default_rng(seed)
    gradient = (np.linspace(70, 170, width)[None, :, None]
                + np.linspace(-20, 20, height)[:, None, None])
    background = np.clip(gradient + rng.normal(0, 6, (height, width, 3)), 0, 255)
    for t in range(frames):
        frame = background.copy()
        boxes = []
        for face in layout:
            dx = 6 * math.sin(2 * math.pi * t / 50 + face.phase)
            dy = 4 * math.cos(2 * math.pi * t / 70 + face.phase)
            boxes.append(paste_face(frame, patch, face_box, face, face.origin[0] + dx,
                                face.origin[1] + dy))
        yield frame.astype(np.uint8), boxes


def paste_face(frame: np.ndarray, patch: np.ndarray, face_box, face: SyntheticFace, x: float,
           y: float) -> tuple[int, int, int, int]:
    """Blend the scaled (and mirrored) patch in at (x, y) through a soft oval; its face box."""
    pw, ph = (int(round(v * face.scale)) for v in patch.shape[1::-1])
    scaled = cv2.resize(patch, (pw, ph), interpolation=cv2.INTER_AREA)
    fx, fy, fw, fh = face_box
    if face.mirrored:
        scaled = cv2.flip(scaled, 1)
        fx = patch.shape[1] - fx - fw
    alpha = np.zeros((ph, pw), np.float32)
    cv2.ellipse(alpha, (pw // 2, ph // 2), (int(pw * 0.48), int(ph * 0.48)), 0, 0, 360, 1.0, -1)
    alpha = cv2.GaussianBlur(alpha, (0, 0), max(1.0, pw / 30))[..., None]
    x0, y0 = int(round(x)), int(round(y))
    region = frame[y0:y0 + ph, x0:x0 + pw]
    region[:] = alpha * scaled + (1 - alpha) * region
    s = face.scale
    return (int(round(x0 + fx * s)), int(round(y0 + fy * s)), int(round(fw * s)),
            int(round(fh * s)))


def write_synthetic_video(path, count: int, frames: int, size: tuple[int, int] = (640, 480),
                          fps: float = DEFAULT_FPS, seed: int = 0) -> list[list[tuple]]:
    """Write `synthetic_frames` as a Motion-JPEG video (near-lossless, so detection sees the
    real pixels); returns each frame's true face boxes."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    if not writer.isOpened():
        raise ValueError(f"OpenCV cannot write {path} as Motion-JPEG")
    truth = []
    for frame, boxes in synthetic_frames(count, frames, size, seed):
        writer.write(frame)
        truth.append(boxes)
    writer.release()
    return truth


def detection_recall(truth: list[list[tuple]], detected: list[list[tuple]],
                     threshold: float = 0.5) -> float:
    """Share of true faces that some detection of the same frame overlaps by IoU >= threshold."""
    hits = sum(any(faces.iou(box, found) >= threshold for found in found_boxes)
               for boxes, found_boxes in zip(truth, detected) for box in boxes)
    return hits / max(1, sum(map(len, truth)))
