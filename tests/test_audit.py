"""The near-duplicate leak audit on a fixture with planted duplicates: every one is found,
nothing else is, and `dedupe: drop` takes exactly those out of the test role."""

from __future__ import annotations

import base64
import json

import cv2
import numpy as np
import pandas as pd
import pytest

from ferbench import audit, jobs, paths
from ferbench.report import build_report
from tests.test_report import write_summary

DISTANCE = 10


def smooth_faces(n: int, rng, size: int = 48) -> np.ndarray:
    """Distinct face-sized images: random 6x6 grey patterns, upsampled, plus grain."""
    coarse = rng.uniform(0, 255, (n, 6, 6)).astype(np.float32)
    big = np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_CUBIC) for c in coarse])
    return np.clip(big + rng.normal(0, 3, big.shape), 0, 255).astype(np.uint8)


def near_copy(image: np.ndarray, rng) -> np.ndarray:
    """What a re-upload does to a picture: rescaled, a little brighter, new grain."""
    small = cv2.resize(image, (40, 40), interpolation=cv2.INTER_AREA)
    back = cv2.resize(small, image.shape[::-1], interpolation=cv2.INTER_LINEAR).astype(float)
    return np.clip(back * 1.03 + 4 + rng.normal(0, 2, back.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def planted():
    """80 distinct faces (uids 0-79) and, as uids 80-91, near-copies: per fold, four of
    a training face and two of a face that is only tested in that fold (no leak)."""
    rng = np.random.default_rng(0)
    faces = list(smooth_faces(80, rng))
    rows, leaks = [], set()
    for fold in range(2):
        train = range(fold * 40, fold * 40 + 30)  # fold 0: 0-29, fold 1: 40-69
        test = [u for u in range(80) if u not in train][:40]
        copies = []
        for source in (list(train)[:4] + test[:2]):
            faces.append(near_copy(faces[source], rng))
            copies.append(len(faces) - 1)
            if source in train:
                leaks.add((fold, len(faces) - 1, source))
        rows += [{"fold": fold, "uid": u, "role": "train"} for u in train]
        rows += [{"fold": fold, "uid": u, "role": "test"} for u in test + copies]
    table = pd.DataFrame(rows).assign(label="anger", subject="s", sequence="", identities=True)
    return np.stack(faces), table, leaks


def test_near_copies_stay_within_a_few_bits_and_distinct_faces_do_not():
    rng = np.random.default_rng(1)
    faces = smooth_faces(200, rng)
    hashes = audit.dhash(faces)
    copies = audit.dhash(np.stack([near_copy(f, rng) for f in faces]))
    assert np.bitwise_count(hashes ^ copies).sum(1).max() <= DISTANCE
    distance, _ = audit.nearest(hashes[:100], hashes[100:])
    assert distance.min() > 2 * DISTANCE


def test_dhash_by_hand():
    # brightness rising left to right: every pixel is brighter than its left neighbour
    ramp = np.tile(np.arange(0, 255, 15, dtype=np.uint8), (16, 1))  # 16 rows x 17 columns
    assert audit.dhash(ramp[None]).tolist() == [[255] * 32]
    assert audit.dhash(ramp[None, :, ::-1]).tolist() == [[0] * 32]
    # one bright column 9: bit 8 (rising edge) set and bit 9 clear in every row
    column = np.zeros((16, 17), np.uint8)
    column[:, 9] = 200
    assert audit.dhash(column[None]).tolist() == [[0, 128] * 16]


def test_every_planted_duplicate_is_found_and_nothing_else(planted):
    faces, folds, leaks = planted
    hashes = audit.dhash(faces)
    pairs = audit.fold_pairs(folds, hashes, hashes)
    near = pairs[pairs["distance"] <= DISTANCE]
    assert set(zip(near["fold"], near["uid"], near["train_uid"])) == leaks
    found = audit.summarize(pairs, DISTANCE, faces, faces)
    assert found["near_duplicates"] == 8
    assert found["rate"] == pytest.approx(8 / len(pairs))
    assert [f["near_duplicates"] for f in found["folds"]] == [4, 4]
    closest = found["closest"][:8]
    assert {(c["fold"], c["uid"], c["train_uid"]) for c in closest} == leaks
    assert all(c["pixel_difference"] < 10 for c in closest)


def test_dedupe_drop_sets_aside_exactly_the_planted_duplicates(planted):
    faces, folds, leaks = planted
    hashes = audit.dhash(faces)
    dropped = audit.drop_near_duplicates(folds, hashes, hashes, DISTANCE)
    moved = dropped[dropped["role"] == audit.DUPLICATE_ROLE]
    assert set(zip(moved["fold"], moved["uid"])) == {(f, u) for f, u, _ in leaks}
    assert len(dropped) == len(folds)
    assert (dropped["role"] == "train").sum() == (folds["role"] == "train").sum()
    # the audit of the deduplicated table still names them, as dropped
    found = audit.summarize(audit.fold_pairs(dropped, hashes, hashes), DISTANCE, faces, faces)
    assert (found["near_duplicates"], found["dropped"]) == (8, 8)


def test_audit_job_writes_counts_and_the_pairs_sheet(planted, tmp_path):
    faces, folds, leaks = planted
    np.save(tmp_path / "faces.npy", faces)
    folds.to_csv(tmp_path / "folds.csv", index=False)
    out = jobs.audit_study(tmp_path / "faces.npy", tmp_path / "faces.npy",
                           tmp_path / "folds.csv", DISTANCE, tmp_path / "audit.json",
                           tmp_path / "pairs.png")
    assert json.loads((tmp_path / "audit.json").read_text()) == out
    assert out["near_duplicates"] == len(leaks)
    assert (out["dataset"], out["protocol"]) == (tmp_path.parent.name, tmp_path.name)
    assert (tmp_path / "pairs.png").read_bytes()[:4] == b"\x89PNG"


def test_report_shows_the_count_the_rate_and_the_closest_pairs(planted, tmp_path):
    faces, folds, leaks = planted
    summary = write_summary(tmp_path / "results", "deep_emotion", [0.7, 0.8],
                            np.random.default_rng(0))
    study = summary.parent.parent  # results/synthetic/subject_5fold
    np.save(tmp_path / "faces.npy", faces)
    folds.to_csv(study / "folds.csv", index=False)
    found = jobs.audit_study(tmp_path / "faces.npy", tmp_path / "faces.npy", study / "folds.csv",
                             DISTANCE, paths.beside_protocol(paths.AUDIT, summary),
                             paths.beside_protocol(paths.AUDIT_PAIRS, summary))
    text = build_report([summary], [], [], tmp_path / "report.html").read_text(encoding="utf-8")
    section = text.split("<h2>7. Near-duplicate leak audit</h2>")[1]
    rate = f"{100 * found['rate']:.2f}"
    assert f"<tr><td><b>all</b></td><td>{found['test_faces']}</td><td>8</td><td>{rate}</td>" in (
        section)
    for fold, uid, source in leaks:
        assert f"<tr><td>{fold}</td><td>{uid}</td><td>anger</td><td>{source}</td>" in section
    sheet = base64.b64encode(paths.beside_protocol(paths.AUDIT_PAIRS, summary).read_bytes())
    assert sheet.decode() in section
