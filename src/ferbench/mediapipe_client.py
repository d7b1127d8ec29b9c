"""Talk to `mediapipe_worker.py`, which runs in its own interpreter (`.venv-mediapipe`).

mediapipe 0.10.21, the last release whose wheel carries the BlazeFace and face-mesh models,
needs numpy<2 and protobuf<5; the main environment needs numpy>=2 and protobuf>=5. So the
worker runs as one long-lived subprocess per stage under the interpreter named by
FERBENCH_MEDIAPIPE_PYTHON (the Snakefile points it at the workflow's own `.venv-mediapipe`),
else `.venv-mediapipe` in the working folder (`make install` builds it from
`workflow/envs/mediapipe-requirements.txt`), and images travel to it over a pipe.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from ferbench.faces import Detection, worker_detections

WORKER = Path(__file__).with_name("mediapipe_worker.py")
PYTHON_VARIABLE = "FERBENCH_MEDIAPIPE_PYTHON"
VENV = ".venv-mediapipe"


class MediapipeUnavailable(RuntimeError):
    """No interpreter with mediapipe was found."""


def interpreter() -> Path:
    """The Python that has mediapipe: $FERBENCH_MEDIAPIPE_PYTHON, else ./.venv-mediapipe."""
    python = Path(os.environ.get(PYTHON_VARIABLE) or Path.cwd() / VENV / "bin" / "python")
    if not python.is_file():
        raise MediapipeUnavailable(
            f"no mediapipe interpreter at {python}: run `make install` (it builds {VENV}) "
            f"or set {PYTHON_VARIABLE} to a Python with mediapipe==0.10.21")
    return python


def available() -> bool:
    try:
        interpreter()
    except MediapipeUnavailable:
        return False
    return True


class MediapipeWorker:
    """One worker process: BlazeFace detection and face mesh for many images.

    Also the face stage's detector (`detect`), filtering faces smaller than `min_face`.
    """

    name = "mediapipe"

    def __init__(self, min_face: int = 0):
        self.min_face = min_face
        self.process = None

    def __enter__(self) -> "MediapipeWorker":
        self.process = subprocess.Popen([str(interpreter()), str(WORKER)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=sys.stderr)
        self._reply()  # {"ready": version}: the models are loaded
        return self

    def __exit__(self, *exc) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)

    def _reply(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the mediapipe worker exited with code {self.process.wait()}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"mediapipe worker: {reply['error']}")
        return reply

    def _request(self, op: str, image: np.ndarray, **fields) -> dict:
        image = np.ascontiguousarray(image, np.uint8)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        header = {"op": op, "shape": list(image.shape), **fields}
        self.process.stdin.write(json.dumps(header).encode() + b"\n" + image.tobytes())
        self.process.stdin.flush()
        return self._reply()

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Faces in a BGR image, most confident first, with BlazeFace's eye keypoints."""
        return worker_detections(self._request("detect", image)["faces"], self.min_face)

    def mesh(self, image: np.ndarray, box) -> np.ndarray | None:
        """The 468 face-mesh points (x, y) of the face in `box`, image pixels; None if lost."""
        points = self._request("mesh", image, box=[int(v) for v in box])["points"]
        return None if points is None else np.asarray(points, float)
