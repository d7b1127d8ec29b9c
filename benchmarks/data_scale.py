"""The data stages at FER2013's size: ingest -> faces -> folds -> augment on 36,000 faces.

Generates two datasets in a temporary folder outside the repository, both from a real face
(`skimage.data.astronaut()`), each face shifted, scaled, mirrored, lit and noised on its own
seed:

- `precropped`: 48x48 grey faces in FER2013's own layout (`fer2013.csv`: emotion, pixels,
  Usage; 80/10/10 Training/PublicTest/PrivateTest), read by the `fer2013` adapter with the
  face options of config/studies/fer2013.yaml (no detector);
- `frames`: 320x240 JPEG frames (the face planted on a cluttered synthetic background,
  `ferbench.data.synthetic.background`) in the `folder` layout (root/<label>/<file>), through
  Haar at the schema's default face options (detection, eye alignment, CLAHE).

Each stage runs the package function its workflow script calls (`ferbench.jobs`), in a child
process of its own, which reports its wall time and the high-water RSS of itself and of its
own workers (`resource.getrusage`), so each stage's peak memory is its own. The faces stage
gets `--threads` workers (the rule's `threads`). Prints, per dataset and stage, seconds,
seconds per 1,000 faces, images/s, CPU seconds (user + system, workers included) per 1,000
faces, which a machine shared with other jobs inflates far less than wall time, and peak
RSS in MB.

    python benchmarks/data_scale.py [--faces 36000] [--datasets precropped frames]
        [--threads 2] [--detect-scale 1] [--workdir DIR] [--json cells.jsonl]

`--faces 2000` checks it in about a minute.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from ferbench import config as config_mod
from ferbench import jobs, live
from ferbench.data import synthetic

CODES = 7  # FER2013's emotion codes 0-6
FRAME_SIZE = (320, 240)
#: Distinct cluttered backgrounds the frames are planted on (drawing one costs more than
#: the rest of a frame).
BACKGROUNDS = 64
STAGES = ("ingest", "faces", "folds", "augment")

CONFIG = {
    "seed": 0,
    "datasets": {
        "precropped": {"source": "path", "adapter": "fer2013", "path": "precropped",
                       "faces": {"detector": "none", "size": 48, "normalise": "none",
                                 "align": False, "landmark_model": "none"}},
        "frames": {"source": "path", "adapter": "folder", "path": "frames",
                   "faces": {"landmark_model": "none"}},
    },
    "protocols": {
        "predefined": {"kind": "predefined", "train": ["Training"], "val": ["PublicTest"],
                       "test": ["PrivateTest"], "class_set": "7"},
        "image_5fold": {"kind": "image_kfold", "folds": 5, "class_set": "7"},
    },
    "studies": [{"dataset": "precropped", "protocol": "predefined", "models": ["deepfer"]},
                {"dataset": "frames", "protocol": "image_5fold", "models": ["deepfer"]}],
}
PROTOCOL = {"precropped": "predefined", "frames": "image_5fold"}


def face_variant(face: np.ndarray, rng: np.random.Generator, side: int) -> np.ndarray:
    """The grey face, jittered by a few pixels, mirrored or not, relit and noised, at `side`."""
    height, width = face.shape
    dx, dy = rng.integers(-6, 7, 2)
    crop = face[max(0, dy):height + min(0, dy), max(0, dx):width + min(0, dx)]
    out = cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    out = out * rng.uniform(0.7, 1.2) + rng.uniform(-25, 25) + rng.normal(0, 4, out.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def write_precropped(root: Path, count: int, seed: int) -> None:
    """`fer2013.csv` with `count` 48x48 faces (FER2013's columns and usage shares)."""
    patch, (fx, fy, fw, fh) = live.astronaut_patch()
    face = cv2.cvtColor(patch, cv2.COLOR_BGR2GRAY)[fy - 8:fy + fh + 8, fx - 8:fx + fw + 8]
    text = np.array([str(v) for v in range(256)], dtype=object)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "fer2013.csv", "w") as out:
        out.write("emotion,pixels,Usage\n")
        for i in range(count):
            rng = np.random.default_rng([seed, i])
            usage = ("Training", "Training", "Training", "Training", "Training", "Training",
                     "Training", "Training", "PublicTest", "PrivateTest")[i % 10]
            pixels = " ".join(text[face_variant(face, rng, 48).ravel()])
            out.write(f"{i % CODES},{pixels},{usage}\n")


def write_frames(root: Path, count: int, seed: int) -> None:
    """`count` 320x240 JPEG frames under root/<label>/, one planted face each."""
    patch, face_box = live.astronaut_patch()
    backgrounds = [synthetic.background(np.random.default_rng([seed, 1, b]), FRAME_SIZE)
                   for b in range(BACKGROUNDS)]
    labels = ["anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"]
    for label in labels:
        (root / label).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        rng = np.random.default_rng([seed, 0, i])
        frame = backgrounds[i % BACKGROUNDS].astype(np.float32)
        scale = rng.uniform(0.6, 1.0)
        x = rng.uniform(0, FRAME_SIZE[0] - patch.shape[1] * scale)
        y = rng.uniform(0, FRAME_SIZE[1] - patch.shape[0] * scale)
        live.paste_face(frame, patch, face_box,
                        live.SyntheticFace((x, y), scale, bool(rng.random() < 0.5), 0.0), x, y)
        frame = frame * rng.uniform(0.75, 1.15) + rng.normal(0, 3, frame.shape)
        cv2.imwrite(str(root / labels[i % CODES] / f"{i:06d}.jpg"),
                    np.clip(frame, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 92])


def stage_paths(work: Path, name: str) -> dict:
    out = work / "out" / name
    return {"manifest": out / "manifest.csv", "quarantine": out / "quarantine.csv",
            "faces": {"array": out / "faces.npy", "table": out / "faces.csv",
                      "stats": out / "detection.json", "samples": out / "samples.png"},
            "folds": out / "folds.csv", "augment": (out / "augment.npy", out / "augment.csv")}


def run_stage(stage: str, name: str, work: Path, threads: int, detect_scale: float) -> dict:
    """One stage, in this (child) process; what it did, its seconds and peak RSS."""
    config = copy.deepcopy(CONFIG)
    config["datasets"]["frames"]["faces"]["detect_scale"] = detect_scale
    config = config_mod.validate(config)
    dataset = {**config["datasets"][name], "path": str(work / name)}
    paths = stage_paths(work, name)
    cpu_before = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    start = time.perf_counter()
    if stage == "ingest":
        result = jobs.ingest(dataset, work / name, paths["manifest"], paths["quarantine"])
    elif stage == "faces":
        stats = jobs.detect(name, dataset, work / name, paths["manifest"], paths["faces"],
                            progress=False, threads=threads)
        result = {k: stats[k] for k in ("images", "detected", "fallback_full_image", "aligned")}
    elif stage == "folds":
        folds = jobs.make_folds(paths["faces"]["table"], config["protocols"][PROTOCOL[name]],
                                config["seed"], paths["folds"])
        result = {"rows": len(folds)}
    else:
        jobs.augment_fold(paths["faces"]["array"], paths["folds"], 0, config["augment"],
                          config["seed"], *paths["augment"])
        result = {"images": int(np.load(paths["augment"][0], mmap_mode="r").shape[0])}
    seconds = time.perf_counter() - start
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum(u.ru_utime + u.ru_stime for u in usage) - cpu_before
    return {"stage": stage, "dataset": name, "seconds": seconds, "cpu_s": cpu,
            "peak_mb": max(u.ru_maxrss for u in usage) / 1024, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=36000)
    parser.add_argument("--datasets", nargs="+", choices=PROTOCOL, default=list(PROTOCOL))
    parser.add_argument("--threads", type=int, default=2, help="the faces stage's workers")
    parser.add_argument("--workdir", type=Path, help="keep the data here (default: a temporary "
                                                     "folder, removed at the end)")
    parser.add_argument("--detect-scale", type=float, default=1.0,
                        help="the frames' faces.detect_scale (default 1: Haar on the full frame)")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="append every cell to FILE as a JSON object")
    parser.add_argument("--stage", nargs=2, metavar=("STAGE", "DATASET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:  # the child process of one stage
        print(json.dumps(run_stage(*args.stage, args.workdir, args.threads, args.detect_scale)))
        return
    with tempfile.TemporaryDirectory(prefix="ferbench-data-scale-") as tmp:
        work = args.workdir or Path(tmp)
        print(f"{args.faces} faces per dataset, faces stage on {args.threads} worker(s), "
              f"frames searched at scale {args.detect_scale}, in {work}")
        print(f"{'dataset':<11} {'stage':<8} {'seconds':>8} {'s/1k faces':>10} {'images/s':>9} "
              f"{'cpu s/1k':>12} {'peak MB':>8}  result")
        for name in args.datasets:
            start = time.perf_counter()
            (write_precropped if name == "precropped" else write_frames)(
                work / name, args.faces, seed=0)
            print(f"{name:<11} {'generate':<8} {time.perf_counter() - start:>8.1f}", flush=True)
            for stage in STAGES:
                child = subprocess.run(
                    [sys.executable, __file__, "--stage", stage, name, "--workdir", str(work),
                     "--threads", str(args.threads), "--detect-scale", str(args.detect_scale)],
                    capture_output=True, text=True)
                if child.returncode:
                    sys.exit(f"{name} {stage} failed:\n{child.stderr[-2000:]}")
                cell = json.loads(child.stdout.splitlines()[-1])
                extra = {k: v for k, v in cell.items()
                         if k not in ("stage", "dataset", "seconds", "cpu_s", "peak_mb")}
                print(f"{name:<11} {stage:<8} {cell['seconds']:>8.1f} "
                      f"{1000 * cell['seconds'] / args.faces:>10.2f} "
                      f"{args.faces / cell['seconds']:>9.0f} "
                      f"{1000 * cell['cpu_s'] / args.faces:>12.2f} {cell['peak_mb']:>8.0f}  "
                      f"{json.dumps(extra)}", flush=True)
                if args.json:
                    with args.json.open("a") as out:
                        out.write(json.dumps({**cell, "faces": args.faces,
                                              "threads": args.threads,
                                              "detect_scale": args.detect_scale}) + "\n")


if __name__ == "__main__":
    main()
