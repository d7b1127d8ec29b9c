"""The source papers' published accuracies (published.yaml), matched to our studies.

A paper's number and ours are only comparable as far as their protocols agree, and FER
papers rarely agree with each other or with us (SPEC, leak audit): image-level folds let one
person's faces reach training and test, augmented copies of a test photo can sit in training,
and class sets and frame choices vary. So each match comes with the list of what differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import yaml

from ferbench import splits

#: How each of our protocol kinds splits, in words, plus "unstated" for a paper that does not
#: describe its split; "{folds}" is the fold count ("k" where unknown).
SPLIT_WORDS = {
    "subject_kfold": "subject-independent {folds}-fold",
    "image_kfold": "{folds}-fold over images (subject overlap)",
    "loso": "leave-one-subject-out",
    "predefined": "the dataset's predefined splits",
    "held_out": "held-out identities",
    "balanced": "a balanced per-class subset",
    "cross_dataset": "trained on one dataset, tested on another",
    "unstated": "a split the paper does not describe",
}
KINDS = tuple(SPLIT_WORDS)

REQUIRED = ("paper", "method", "model", "dataset", "class_set", "kind", "protocol", "accuracy",
            "where")


@dataclass(frozen=True)
class Published:
    """One number a paper publishes, with the protocol it was measured under."""

    paper: str
    method: str
    model: str
    dataset: str
    class_set: str | None
    kind: str
    protocol: str
    accuracy: float
    where: str
    test_dataset: str | None = None
    frames: str | None = None
    folds: int | None = None
    note: str = ""

    @property
    def tested_on(self) -> str:
        return self.test_dataset or self.dataset

    @property
    def datasets(self) -> str:
        """"ckplus", or "ckplus → jaffe" for a cross-dataset number."""
        return f"{self.dataset} → {self.test_dataset}" if self.test_dataset else self.dataset


def load(text: str | None = None) -> list[Published]:
    """The package's published.yaml (or `text` in its format), checked field by field."""
    if text is None:
        text = resources.files("ferbench").joinpath("published.yaml").read_text()
    entries = []
    for number, entry in enumerate(yaml.safe_load(text), start=1):
        missing = [key for key in REQUIRED if key not in entry]
        if missing:
            raise ValueError(f"published entry {number} lacks {', '.join(missing)}")
        if entry["kind"] not in KINDS:
            raise ValueError(f"published entry {number}: unknown kind {entry['kind']!r} "
                             f"(known: {', '.join(KINDS)})")
        entries.append(Published(**entry))
    return entries


def for_study(entries: list[Published], context: dict) -> list[Published]:
    """Entries for the study's model trained and tested on the same datasets (adapters)."""
    return [e for e in entries if e.model == context["model"]
            and (e.dataset, e.tested_on) == (context["adapter"], context["test_adapter"])]


def split_words(kind: str, folds: int | None) -> str:
    return SPLIT_WORDS[kind].format(folds=folds or "k")


def differences(entry: Published, context: dict) -> list[str]:
    """Where the paper's protocol differs from the study's (`jobs.study_context`); [] if none."""
    found = []
    ours_folds = context["folds"] if context["kind"] in splits.MULTI_FOLD_KINDS else None
    if (entry.kind, entry.folds) != (context["kind"], ours_folds):
        found.append(f"split: paper {split_words(entry.kind, entry.folds)} ({entry.protocol}); "
                     f"ours {split_words(context['kind'], ours_folds)}")
    if entry.class_set is None:
        found.append(f"classes: paper does not say; ours {context['class_set']}")
    elif entry.class_set != context["class_set"]:
        found.append(f"classes: paper {entry.class_set}; ours {context['class_set']}")
    if entry.frames and entry.frames != context["frames"]:
        found.append(f"frames: paper {entry.frames}; ours {context['frames']}")
    return found
