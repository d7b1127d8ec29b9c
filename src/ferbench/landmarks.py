"""Landmarks stage: 68 facial landmarks per face crop, for the AU-attention models.

Output convention (`landmarks.npy`): float32 array of shape (N, 68, 2), row i belonging to
face i of `faces.npy`. Each point is (x, y) in pixels of that face crop, x to the right and y
down, with pixel centres at integer coordinates (OpenCV's convention: (0, 0) is the centre of
the top-left pixel). Points near the face border may fall outside the crop. A face without
landmarks is all NaN. The 68 points follow the iBUG 300-W order, seen in the image:

    0-16 jaw, from the image-left end round the chin    17-21 / 22-26 image-left / right brow
    27-30 nose bridge, top to tip                       31-35 nose base, left to right
    36-41 image-left eye, 42-47 image-right eye: each from its image-left corner, clockwise
    48-59 outer lip from the left corner, clockwise     60-67 inner lip, likewise

E2-Capsnet's reference unit, the inner-eye-corner distance, is |p39 - p42|.

Where the points come from, per face: the dataset's own landmarks (the manifest's `landmarks`
column, original-image pixels: CK+ ships them, the synthetic generator records the points
it drew), else MediaPipe's face mesh (468 points, mapped to the 68 by `MESH_TO_68`) run on
the original image around the face box, unless the dataset's faces block says
`landmark_model: none`. Either way the points go through the face stage's recorded
`crop_transform`, the same rotation, crop and resize its pixels went through.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from ferbench import faces as faces_mod
from ferbench.data import images

N_POINTS = 68

#: MediaPipe face-mesh index of each iBUG 68 point (canonical face-model topology; the image-
#: left side of the mesh is the subject's right). Symmetric pairs mirror each other, e.g.
#: jaw 127/356, eye corners 33/263 and 133/362, mouth corners 61/291.
MESH_TO_68 = (
    # jaw 0-16
    127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356,
    # brows 17-21, 22-26
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
    # nose bridge 27-30, base 31-35
    168, 197, 5, 4, 98, 97, 2, 326, 327,
    # eyes 36-41, 42-47
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
    # outer lip 48-59
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,
    # inner lip 60-67
    78, 82, 13, 312, 308, 317, 14, 87,
)

#: Colours (BGR) of the point groups on the sample sheet: jaw, brows, nose, eyes, mouth.
GROUP_COLOURS = ((0, 200, 255), (255, 160, 0), (0, 255, 0), (0, 0, 255), (255, 0, 255))
GROUP_STARTS = (0, 17, 27, 36, 48)


def mesh_to_68(mesh: np.ndarray) -> np.ndarray:
    """(468, 2) face-mesh points -> (68, 2) iBUG-order points."""
    return np.asarray(mesh, float)[list(MESH_TO_68)]


def crop_landmarks(table: pd.DataFrame, n_faces: int, root: Path, landmark_model: str,
                   progress: bool = True) -> tuple[np.ndarray, dict]:
    """Landmarks of every face in the face table, in face-crop pixels; and where they came from.

    Returns ((n_faces, 68, 2) float32, counts per source: dataset / mesh / none).
    """
    out = np.full((n_faces, N_POINTS, 2), np.nan, np.float32)
    counts = {"dataset": 0, "mesh": 0, "none": 0}
    with_face = table[table["face_index"] >= 0]
    needs_mesh = landmark_model == "mediapipe" and any(
        faces_mod.parse_landmarks(text) is None for text in _own_landmarks(with_face))
    with _mesh_worker(needs_mesh) as worker:
        for row, own in tqdm(zip(with_face.itertuples(index=False), _own_landmarks(with_face)),
                             total=len(with_face), desc="landmarks", disable=not progress,
                             unit="face"):
            points, source = faces_mod.parse_landmarks(own), "dataset"
            if points is None and worker is not None:
                points, source = _mesh_points(worker, root, row), "mesh"
            if points is None:
                counts["none"] += 1
                continue
            counts[source] += 1
            transform = np.array(row.crop_transform.split(), float).reshape(2, 3)
            out[int(row.face_index)] = faces_mod.apply_transform(transform, points)
    return out, counts


def _own_landmarks(table: pd.DataFrame) -> list:
    return list(table["landmarks"]) if "landmarks" in table else [None] * len(table)


def _mesh_worker(needed: bool):
    if not needed:
        return contextlib.nullcontext(None)
    from ferbench import mediapipe_client

    return mediapipe_client.MediapipeWorker()


def _mesh_points(worker, root: Path, row) -> np.ndarray | None:
    """The face mesh around the row's face box, as 68 points in original-image pixels."""
    image = images.read_image(root, row.image)
    mesh = worker.mesh(image, faces_mod.parse_box(row.bbox)) if image is not None else None
    return None if mesh is None else mesh_to_68(mesh)


def sample_sheet(faces: np.ndarray, table: pd.DataFrame, points: np.ndarray, path: Path,
                 per_row: int = 8, rows: int = 3, zoom: int = 3) -> Path:
    """Sample faces, enlarged `zoom` times, with their landmarks drawn in group colours."""
    tiles = [draw_points(faces[i], points[i], zoom)
             for i in faces_mod.sample_faces(table, per_row * rows)]
    side = faces.shape[1] * zoom
    return faces_mod.write_grid(tiles or [np.zeros((side, side, 3), np.uint8)], Path(path),
                                per_row)


def draw_points(face: np.ndarray, points: np.ndarray, zoom: int) -> np.ndarray:
    """A colour, `zoom`-times enlarged copy of one face crop with its points as dots."""
    tile = cv2.resize(face, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
    if tile.ndim == 2:
        tile = cv2.cvtColor(tile, cv2.COLOR_GRAY2BGR)
    bounds = GROUP_STARTS[1:] + (N_POINTS,)
    for start, end, colour in zip(GROUP_STARTS, bounds, GROUP_COLOURS):
        for x, y in points[start:end]:
            if np.isfinite(x) and np.isfinite(y):  # pixel centres: crop x -> tile (x + .5) zoom
                centre = (int(round((x + 0.5) * zoom - 0.5)), int(round((y + 0.5) * zoom - 0.5)))
                cv2.circle(tile, centre, max(1, zoom // 2), colour, -1, cv2.LINE_AA)
    return tile


def run(dataset: dict, root, faces_table, faces_array, out_array, out_samples,
        progress: bool = True) -> dict:
    """The landmarks stage for one dataset: write landmarks.npy and the sample sheet."""
    table = pd.read_csv(faces_table, dtype=str, keep_default_na=False)
    table["face_index"] = table["face_index"].astype(int)
    faces = np.load(faces_array)
    model = faces_mod.FaceOptions.from_config(dataset["faces"]).landmark_model
    points, counts = crop_landmarks(table, len(faces), Path(root), model, progress)
    Path(out_array).parent.mkdir(parents=True, exist_ok=True)
    np.save(out_array, points)
    sample_sheet(faces, table, points, Path(out_samples))
    return counts
