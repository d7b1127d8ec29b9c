"""How well OpenCV's Haar cascade finds the synthetic faces, and how fast they are made.

Generates the default synthetic dataset into a temporary folder, runs the face stage's
detector (largest detection per image) and prints: detection rate (hit = IoU with gt_bbox
>= 0.5), mean IoU of hits, the share of images with more than one detection (false
positives), the detector box relative to gt_bbox (to calibrate gt_bbox) and images/s of
generation.

    python benchmarks/synthetic_detection.py [--identities 12 --repetitions 4 --frames 6]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from ferbench.data import synthetic
from ferbench.faces import HaarDetector, iou


def measure(root: Path, table) -> dict:
    """Detect every image; per-image IoU, detection count and box offsets against gt."""
    detector = HaarDetector(min_face=40)
    ious, counts, offsets = [], [], []
    for row in table.itertuples(index=False):
        gray = cv2.imread(str(root / row.image), cv2.IMREAD_GRAYSCALE)
        boxes = detector(gray)
        gt = tuple(int(v) for v in row.gt_bbox.split())
        counts.append(len(boxes))
        ious.append(iou(boxes[0], gt) if boxes else 0.0)
        if boxes:
            x, y, w, h = boxes[0]
            offsets.append(((x + w / 2 - gt[0] - gt[2] / 2) / gt[2],
                            (y + h / 2 - gt[1] - gt[3] / 2) / gt[3], w / gt[2]))
    ious, counts = np.array(ious), np.array(counts)
    hits = ious >= 0.5
    off = np.array(offsets) if offsets else np.zeros((0, 3))
    return {"images": len(table), "detection_rate": hits.mean(),
            "any_detection": (counts > 0).mean(), "mean_iou_hits": ious[hits].mean(),
            "multi_detection": (counts > 1).mean(), "dx": off[:, 0].mean(),
            "dy": off[:, 1].mean(), "side_ratio": off[:, 2].mean(), "ious": ious}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=12)
    parser.add_argument("--repetitions", type=int, default=4)
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--by", default="", help="also break the hit rate down by a column")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        table = synthetic.generate(root, identities=args.identities,
                                   repetitions=args.repetitions, frames=args.frames,
                                   frame_size=(args.width, args.height), seed=args.seed,
                                   progress=False)
        seconds = time.perf_counter() - start
        result = measure(root, table)
    print(f"images               {result['images']}")
    print(f"generation           {result['images'] / seconds:.1f} images/s")
    print(f"detection rate       {result['detection_rate']:.2%}  (IoU >= 0.5, largest box)")
    print(f"any detection        {result['any_detection']:.2%}")
    print(f"mean IoU of hits     {result['mean_iou_hits']:.3f}")
    print(f">1 detection         {result['multi_detection']:.2%}")
    print(f"det - gt centre      dx {result['dx']:+.3f}  dy {result['dy']:+.3f}  (x gt side)")
    print(f"det / gt side        {result['side_ratio']:.3f}")
    if args.by:
        table["hit"] = result["ious"] >= 0.5
        print(table.groupby(args.by)["hit"].mean().round(3).to_string())


if __name__ == "__main__":
    main()
