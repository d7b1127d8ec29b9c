"""Rule private_classifier: the paper's linear classifier from one fold's training faces,
with its plaintext accuracy (float, and in the integers the protocol computes) on the fold's
test faces."""

from __future__ import annotations

import numpy as np

from ferbench import jobs
from ferbench.train import class_index
from ferbench.privacy import classifier as classifier_mod
from ferbench.privacy.protocol import FixedPointClassifier


def train_fold(faces_path, folds_path, fold: int, model_out, accuracy_out,
               size: int = classifier_mod.DEFAULT_SIZE,
               components: int = classifier_mod.DEFAULT_COMPONENTS) -> dict:
    faces = np.load(faces_path)
    folds = jobs.read_folds(folds_path)
    labels = jobs.protocol_labels(folds)
    index = class_index(labels)
    part = folds[folds["fold"] == fold]
    if part.empty:
        raise ValueError(f"{folds_path} has no fold {fold}")
    train, test = part[part["role"] == "train"], part[part["role"] == "test"]
    classifier = classifier_mod.train(faces[train["uid"].to_numpy()],
                                      train["label"].map(index).to_numpy(), labels, size,
                                      components)
    classifier.save(model_out)
    pixels = classifier.preprocess(faces[test["uid"].to_numpy()])
    truth = test["label"].map(index).to_numpy()
    plain = classifier.predict(pixels)
    fixed = np.argmax(FixedPointClassifier.from_classifier(classifier).scores(pixels)
                      .astype(np.float64), axis=1)
    info = {"fold": fold, "labels": labels, "size": size, "pixels": classifier.pixels,
            "classes": len(labels), "components": classifier.projection.shape[1],
            "train_faces": len(train), "test_faces": len(test),
            "test_accuracy": float(np.mean(plain == truth)),
            "fixed_point_test_accuracy": float(np.mean(fixed == truth)),
            "fixed_point_agreement": float(np.mean(fixed == plain))}
    jobs.write_json(accuracy_out, info)
    return info
