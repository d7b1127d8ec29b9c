"""Near-duplicate leak audit: is a test face (nearly) the same picture as a training face?

Keeping subjects apart is not enough. FER2013 repeats pictures across its splits (hundreds of
PublicTest / PrivateTest faces are pixel-identical to a Training face), and CK+'s last frames
of a sequence are near-identical, so an image-level split puts the same picture on both
sides. A perceptual hash finds them: dHash (Krawetz's difference hash) compares each pixel of
a 17x16 thumbnail with its right neighbour, giving 256 bits that survive rescaling, small
brightness changes and compression; near-identical pictures differ in a few bits. (The
common 64-bit 9x8 version is too coarse for aligned faces: on the synthetic faces, crops of
different people fall within 2 bits of each other; at 256 bits they stay 27 or more apart.)

For every fold, each test face's nearest training face by Hamming distance is found; those
within the protocol's `duplicate_distance` are counted (and, with `dedupe: drop`, taken out
of the test role, kept in the table with role `duplicate` so the audit can report them).
"""

from __future__ import annotations

import cv2
import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ferbench.figures import RC, figure_png

#: The role a dropped near-duplicate test face gets in the split table.
DUPLICATE_ROLE = "duplicate"
#: Side of the dHash grid: SIDE x SIDE bits.
SIDE = 16
HASH = f"dhash{SIDE * SIDE}"
#: Bytes of one block of XORed hashes compared at once.
BLOCK_BYTES = 1 << 26


def dhash(images: np.ndarray) -> np.ndarray:
    """Difference hash of each image (N, H, W) or (N, H, W, C): one row of SIDE*SIDE/8
    packed bytes per image."""
    out = np.empty((len(images), SIDE * SIDE // 8), dtype=np.uint8)
    for i, image in enumerate(images):
        if image.ndim == 3 and image.shape[2] > 1:
            image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
        thumb = cv2.resize(np.squeeze(image).astype(np.float32), (SIDE + 1, SIDE),
                           interpolation=cv2.INTER_AREA)
        out[i] = np.packbits(thumb[:, 1:] > thumb[:, :-1])
    return out


def nearest(queries: np.ndarray, references: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each query hash, the Hamming distance to its nearest reference hash and that
    reference's position (the first one on ties); -1 where there are no references."""
    distance = np.full(len(queries), 8 * queries.shape[1] + 1, dtype=np.int64)
    position = np.full(len(queries), -1, dtype=np.int64)
    if len(references) == 0:
        return distance, position
    # 64-bit words: XOR and popcount on 8x fewer elements than on the packed bytes
    queries, references = (np.ascontiguousarray(h).view(np.uint64) for h in (queries, references))
    chunk = max(1, BLOCK_BYTES // references.nbytes)
    for start in range(0, len(queries), chunk):
        block = np.bitwise_count(queries[start:start + chunk, None] ^ references[None]).sum(
            -1, dtype=np.int64)
        position[start:start + chunk] = block.argmin(1)
        distance[start:start + chunk] = block.min(1)
    return distance, position


def fold_pairs(folds: pd.DataFrame, train_hashes: np.ndarray,
               test_hashes: np.ndarray) -> pd.DataFrame:
    """Every test face of every fold (roles test and duplicate) with its nearest training
    face: fold, uid, label, train_uid, train_label, distance. Hashes are indexed by uid (the
    test dataset's for a cross-dataset protocol)."""
    rows = []
    for fold, part in folds.groupby("fold", sort=True):
        train = part[part["role"] == "train"]
        test = part[part["role"].isin(["test", DUPLICATE_ROLE])]
        distance, position = nearest(test_hashes[test["uid"].to_numpy()],
                                     train_hashes[train["uid"].to_numpy()])
        found = position >= 0
        rows.append(pd.DataFrame({
            "fold": fold, "uid": test["uid"].to_numpy(), "label": test["label"].to_numpy(),
            "role": test["role"].to_numpy(),
            "train_uid": np.where(found, train["uid"].to_numpy()[position.clip(0)], -1),
            "train_label": np.where(found, train["label"].to_numpy()[position.clip(0)], ""),
            "distance": distance}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def drop_near_duplicates(folds: pd.DataFrame, train_hashes: np.ndarray,
                         test_hashes: np.ndarray, max_distance: int) -> pd.DataFrame:
    """The split table with every test face whose nearest training face is within
    `max_distance` bits moved to role `duplicate` (no model is tested on it)."""
    pairs = fold_pairs(folds, train_hashes, test_hashes)
    leaked = pairs[pairs["distance"] <= max_distance].set_index(["fold", "uid"]).index
    out = folds.copy()
    tested = out["role"] == "test"
    hit = pd.MultiIndex.from_frame(out[["fold", "uid"]]).isin(leaked)
    out.loc[tested & hit, "role"] = DUPLICATE_ROLE
    return out


def summarize(pairs: pd.DataFrame, max_distance: int, train_faces, test_faces,
              closest: int = 12) -> dict:
    """Per fold and overall: test faces, near-duplicates (count, rate, with another label),
    whether they were dropped, and the `closest` pairs; faces arrays give each pair's mean
    absolute pixel difference (0 for pixel-identical crops)."""
    near = pairs[pairs["distance"] <= max_distance]

    def counts(part: pd.DataFrame, duplicates: pd.DataFrame) -> dict:
        return {"test_faces": int(len(part)), "near_duplicates": int(len(duplicates)),
                "rate": float(len(duplicates) / len(part)) if len(part) else 0.0,
                "other_label": int((duplicates["label"] != duplicates["train_label"]).sum()),
                "dropped": int((duplicates["role"] == DUPLICATE_ROLE).sum())}

    top = pairs[pairs["train_uid"] >= 0].sort_values(["distance", "fold", "uid"],
                                                     kind="stable").head(closest)
    return {
        "hash": HASH, "max_distance": int(max_distance),
        **counts(pairs, near),
        "folds": [{"fold": int(fold), **counts(part, near[near["fold"] == fold])}
                  for fold, part in pairs.groupby("fold", sort=True)],
        "closest": [{"fold": int(r.fold), "uid": int(r.uid), "label": r.label,
                     "train_uid": int(r.train_uid), "train_label": r.train_label,
                     "distance": int(r.distance),
                     "pixel_difference": pixel_difference(test_faces[r.uid],
                                                          train_faces[r.train_uid])}
                    for r in top.itertuples()],
    }


def pixel_difference(a: np.ndarray, b: np.ndarray) -> float | None:
    """Mean absolute difference of two crops in grey levels (None for crops of two sizes,
    as across two datasets' face stages)."""
    if a.shape != b.shape:
        return None
    return float(np.abs(a.astype(float) - b.astype(float)).mean())


def duplicate_pairs_figure(closest: list[dict], trained: np.ndarray,
                           tested: np.ndarray) -> bytes:
    """The leak audit's closest (test, training) pairs side by side, test face first, with
    fold, labels and Hamming distance; a blank sheet when there are no pairs."""
    per_row = 4
    rows = max(1, -(-len(closest) // per_row))
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(8.0, 1.25 * rows + 0.2), layout="constrained")
        axes = fig.subplots(rows, 2 * per_row, squeeze=False)
        for ax in axes.ravel():
            ax.axis("off")
        for i, pair in enumerate(closest):
            left, right = axes[i // per_row, 2 * (i % per_row)], axes[i // per_row,
                                                                      2 * (i % per_row) + 1]
            for ax, image, role, label in ((left, tested[pair["uid"]], "test", pair["label"]),
                                           (right, trained[pair["train_uid"]], "train",
                                            pair["train_label"])):
                ax.imshow(np.squeeze(image), cmap="gray", vmin=0, vmax=255)
                ax.set_title(f"{role} {label}", fontsize=6)
            left.text(1.0, -0.08, f"fold {pair['fold']}, {pair['distance']} bits",
                      transform=left.transAxes, ha="center", va="top", fontsize=6)
        return figure_png(fig)
