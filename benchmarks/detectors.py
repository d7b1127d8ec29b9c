"""Haar vs MediaPipe (BlazeFace) on the synthetic dataset: detection, IoU, speed, eye line.

Generates the synthetic dataset into a temporary folder and runs each detector of the face
stage over every image. Per detector it prints the detection rate (best box with IoU >= 0.5
against gt_bbox), the share of images with any detection, mean IoU over all images, ms per
image, and the eye line's residual tilt in the face crop (from the generator's true
landmarks) without alignment and with the eyes that detector's face stage finds itself
(Haar: OpenCV's eye cascade; MediaPipe: BlazeFace's eye keypoints). With MediaPipe it also
prints the face mesh's error against the true 68 points (mean distance / eye distance).

    python benchmarks/detectors.py [--identities 12 --repetitions 4 --frames 6]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from ferbench import faces, landmarks, mediapipe_client
from ferbench.data import synthetic


def detection(detector, root: Path, table) -> dict:
    """Detection rate, IoU and ms/image of one detector (`detect` of the face stage)."""
    images = [cv2.imread(str(root / image)) for image in table["image"]]
    start = time.perf_counter()
    found = [detector.detect(image) for image in images]
    seconds = time.perf_counter() - start
    ious = np.array([faces.iou(f[0].box, faces.parse_box(gt)) if f else 0.0
                     for f, gt in zip(found, table["gt_bbox"])])
    return {"rate": (ious >= 0.5).mean(), "any": np.mean([bool(f) for f in found]),
            "iou": ious.mean(), "ms": 1000 * seconds / len(images)}


def tilts(root: Path, table, options: faces.FaceOptions) -> np.ndarray:
    """|eye-line angle| in each face crop, measured on the true landmarks moved into it."""
    bare = table.assign(landmarks="")  # the stage must find the eyes itself
    _, faced, _ = faces.extract_faces(bare, root, options, progress=False)
    out = []
    for transform, text in zip(faced["crop_transform"], table["landmarks"]):
        matrix = np.array(transform.split(), float).reshape(2, 3)
        points = faces.apply_transform(matrix, faces.parse_landmarks(text))
        out.append(abs(faces.eye_line_angle(faces.landmark_eyes(points))))
    return np.array(out)


def mesh_error(root: Path, table) -> np.ndarray:
    """Per image: mean distance of the mapped mesh to the true 68 points / eye distance."""
    errors = []
    with mediapipe_client.MediapipeWorker() as worker:
        for row in table.itertuples(index=False):
            truth = faces.parse_landmarks(row.landmarks)
            mesh = worker.mesh(cv2.imread(str(root / row.image)), faces.parse_box(row.gt_bbox))
            if mesh is None:
                errors.append(np.nan)
                continue
            left, right = faces.landmark_eyes(truth)
            scale = np.hypot(right[0] - left[0], right[1] - left[1])
            errors.append(np.linalg.norm(landmarks.mesh_to_68(mesh) - truth, axis=1).mean()
                          / scale)
    return np.array(errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=12)
    parser.add_argument("--repetitions", type=int, default=4)
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    names = ["haar"] + (["mediapipe"] if mediapipe_client.available() else [])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        table = synthetic.generate(root, identities=args.identities,
                                   repetitions=args.repetitions, frames=args.frames,
                                   seed=args.seed, progress=False)
        print(f"{len(table)} synthetic images, {table['image'].nunique()} faces")
        print(f"{'detector':10s} {'rate':>7s} {'any':>7s} {'IoU':>6s} {'ms/img':>7s} "
              f"{'tilt unaligned':>15s} {'tilt aligned':>13s}")
        for name in names:
            options = faces.FaceOptions(detector=name)
            with faces.make_detector(options) as detector:
                result = detection(detector, root, table)
            before = tilts(root, table, replace(options, align=False))
            after = tilts(root, table, options)
            print(f"{name:10s} {result['rate']:7.2%} {result['any']:7.2%} {result['iou']:6.3f} "
                  f"{result['ms']:7.1f} {before.mean():11.2f} deg {after.mean():9.2f} deg")
        if "mediapipe" in names:
            errors = mesh_error(root, table)
            print(f"face mesh -> 68 points: found {np.isfinite(errors).mean():.2%}, error "
                  f"{np.nanmean(errors):.3f} (median {np.nanmedian(errors):.3f}) eye distances")


if __name__ == "__main__":
    main()
