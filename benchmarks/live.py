"""`ferbench live` timing: the MobileNet-CL paper's breakdown on 640x480 video with 1, 3, 8 faces.

Builds Motion-JPEG test videos with copies of a real face (`skimage.data.astronaut()`) at
known positions (`ferbench.live.write_synthetic_video`), then runs the live pipeline on them
exactly as the CLI does (untrained weights: timing does not depend on them) on the CPU, and
on CUDA when available (or on --devices). Every detector searches every frame: `haar` the
whole frame (the paper's system), `haar/M` around the previous faces with a whole-frame
search every M-th frame (`--full-search-every`), `mediapipe` BlazeFace in its worker process
(the frame travels over a pipe). Prints per (device, model, detector, faces): detection
ms/frame, preprocessing ms/face, classification ms/face, end-to-end frames/s (reading,
drawing and writing included) and detection recall against the planted faces (IoU >= 0.5).
Each cell is the best of `--repeats` runs, so jobs competing for the CPU distort it less.
--json FILE appends every cell to FILE as one JSON object (benchmarks/gpu_check.sh).

    python benchmarks/live.py [--frames 60 --threads 1 --detect-scale 0.5 --repeats 2]
        [--detectors haar mediapipe --full-search-every 1 10] [--devices cpu cuda]
        [--json cells.jsonl]
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

import cv2
import torch

from ferbench import faces, live, mediapipe_client
from ferbench.cli import LIVE_THREADS

LABELS = ["neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise"]


def detected_boxes(jsonl: Path, frames: int) -> list[list[tuple]]:
    """Each frame's detected boxes, read back from `faces.jsonl`."""
    boxes = [[] for _ in range(frames)]
    for line in jsonl.read_text().splitlines():
        row = json.loads(line)
        boxes[row["frame"]].append(tuple(row["box"]))
    return boxes


def measure(video: Path, truth, model_file: Path, device: torch.device, detect_scale: float,
            detect_every: int, full_every: int, out_dir: Path) -> dict:
    model = live.load_live_model(model_file, device)
    with live.Recognizer(model, device, detect_scale, detect_every, full_every) as recognizer:
        summary = live.run(live.open_source(str(video)), recognizer, out_dir, progress=False)
    found = detected_boxes(out_dir / "faces.jsonl", len(truth))
    return {**summary, "recall": live.detection_recall(truth, found)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--faces", type=int, nargs="+", default=[1, 3, 8])
    parser.add_argument("--models", nargs="+", default=["mobilenet_cl", "deep_emotion"])
    parser.add_argument("--detect-scale", type=float, default=0.5)
    parser.add_argument("--detect-every", type=int, default=1,
                        help="detect on every N-th frame, reuse the boxes in between")
    parser.add_argument("--detectors", nargs="+", choices=("haar", "mediapipe"),
                        default=["haar", "mediapipe"],
                        help="mediapipe is skipped when its interpreter is missing")
    parser.add_argument("--full-search-every", type=int, nargs="+", default=[1, 10],
                        help="Haar's whole-frame search interval(s); 1: the whole of every frame")
    parser.add_argument("--threads", type=int, default=LIVE_THREADS,
                        help="torch and OpenCV threads (default: ferbench live's)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--devices", nargs="+", choices=("cpu", "cuda"), default=["cpu", "cuda"],
                        help="cuda is skipped when torch.cuda.is_available() is false")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="append every cell to FILE as a JSON object")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    devices = [torch.device(kind) for kind in args.devices
               if kind == "cpu" or torch.cuda.is_available()]
    detectors = [(name, every) for name in args.detectors
                 if name == "haar" or mediapipe_client.available()
                 for every in (args.full_search_every if name == "haar" else [1])]
    print(f"640x480, {args.frames} frames, detect scale {args.detect_scale}, "
          f"detection every {args.detect_every} frame(s), "
          f"{args.threads} thread(s), best of {args.repeats}")
    print(f"{'device':<6} {'model':<13} {'detector':<10} {'faces':>5} {'detect ms/frame':>16} "
          f"{'preproc ms/face':>16} {'classify ms/face':>17} {'fps':>6} {'recall':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        videos = {n: (tmp / f"faces{n}.avi", live.write_synthetic_video(
            tmp / f"faces{n}.avi", n, args.frames)) for n in args.faces}
        for device, name, (detector, every) in itertools.product(devices, args.models,
                                                                  detectors):
            model_file = live.write_untrained_model(
                tmp / f"{name}-{detector}.pt", name, LABELS,
                vars(faces.FaceOptions(detector=detector)))
            label = detector if every == 1 else f"{detector}/{every}"
            for n, (video, truth) in videos.items():
                runs = [measure(video, truth, model_file, device, args.detect_scale,
                                args.detect_every, every, tmp / "out")
                        for _ in range(args.repeats)]
                best = max(runs, key=lambda r: r["end_to_end_fps"])
                print(f"{device.type:<6} {name:<13} {label:<10} {n:>5} "
                      f"{best['detection_ms_per_frame']:>16.2f} "
                      f"{best['preprocessing_ms_per_face']:>16.2f} "
                      f"{best['classification_ms_per_face']:>17.2f} "
                      f"{best['end_to_end_fps']:>6.1f} {best['recall']:>7.3f}", flush=True)
                if args.json:
                    with args.json.open("a") as out:
                        out.write(json.dumps({"device": device.type, "model": name,
                                              "detector": detector, "faces_per_frame": n,
                                              **best}) + "\n")

if __name__ == "__main__":
    main()
