"""What a model sees: the face crop, then the extra channels its class asks for.

The capsule models of E2-Capsnet and DE-Capsnet take the face's AU attention map as a second
channel (`extra_channels = ("au_attention",)`). It is drawn here from the landmarks stage's
68 points, once per face, and moved with the face through each augmented copy's recorded
geometry, so the training loop and every model stay generic. Channels are stored as uint8
images like the face (a map weight w in [0, 1] as round(255 w)).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ferbench import augment
from ferbench.models.au_attention import attention_maps

#: Channels the workflow can feed, and what each needs.
KNOWN_CHANNELS = ("au_attention",)
#: The manifest's gender codes (data/manifest.py), as group indices 0, 1.
GENDERS = ("f", "m")


def au_attention_channel(landmarks: np.ndarray, side: int) -> np.ndarray:
    """(N, side, side) uint8 AU attention maps of face crops with (N, 68, 2) landmarks."""
    maps = attention_maps(landmarks, face_side=side, size=side)
    return np.rint(maps * 255).astype(np.uint8)


def stack_channels(faces: np.ndarray, extra_channels: tuple[str, ...], uids=None,
                   landmarks: np.ndarray | None = None,
                   geometry: pd.DataFrame | None = None) -> np.ndarray:
    """(N, S, S) faces as they are, or (N, 1 + extra, S, S) with the extra channels.

    `uids` index each face's landmarks (-1: a face with none, e.g. a DCGAN sample, which gets
    a uniform map); `geometry` holds the augment table's GEOMETRY columns of each face, so
    its map is cropped, mirrored and rotated exactly as the face was.
    """
    if not extra_channels:
        return faces
    unknown = sorted(set(extra_channels) - set(KNOWN_CHANNELS))
    if unknown:
        raise ValueError(f"no input channel {', '.join(unknown)} (known: "
                         f"{', '.join(KNOWN_CHANNELS)})")
    if landmarks is None:
        raise ValueError("the AU attention channel needs the landmarks stage's array")
    uids = np.asarray(uids)
    points = np.full((len(uids), 68, 2), np.nan)
    known = uids >= 0
    points[known] = landmarks[uids[known]]
    maps = au_attention_channel(points, faces.shape[-1])
    if geometry is not None:
        rows = geometry[list(augment.GEOMETRY)].to_dict("records")
        maps = np.stack([augment.apply_geometry(m, row) for m, row in zip(maps, rows)]) \
            if len(rows) else maps
    return np.stack([faces, maps], axis=1)


def gender_groups(faces_table: pd.DataFrame, uids) -> np.ndarray:
    """Each face's gender index (GENDERS; -1 unknown or no source face) by uid, the face's
    row in the face array, for DAM-CNN's gender-bound decoders. A dataset without a gender
    column is refused."""
    if "gender" not in faces_table.columns or not faces_table["gender"].isin(GENDERS).any():
        raise ValueError("gender-bound decoders need the dataset's gender column (f/m); "
                         "this dataset has none")
    found = faces_table[faces_table["face_index"] >= 0]
    by_uid = dict(zip(found["face_index"].astype(int),
                      found["gender"].map({g: i for i, g in enumerate(GENDERS)}).fillna(-1)))
    return np.array([by_uid.get(int(uid), -1) for uid in uids], dtype=int)


def sequence_indices(folds: pd.DataFrame, uids) -> np.ndarray:
    """Each face's sequence index by uid (one per (subject, sequence) of the split table;
    -1: no source face, e.g. a DCGAN sample), so DAM-CNN's decoders can tell another
    variation from another frame or augmented copy of the same face."""
    faces = folds.drop_duplicates("uid")
    codes = pd.MultiIndex.from_frame(faces[["subject", "sequence"]]).factorize()[0]
    by_uid = dict(zip(faces["uid"].astype(int), codes))
    return np.array([by_uid.get(int(uid), -1) for uid in uids], dtype=int)
