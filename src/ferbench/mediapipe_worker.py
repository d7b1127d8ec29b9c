"""MediaPipe face detection (BlazeFace) and face mesh, served over stdin/stdout.

The mediapipe wheels that still carry their models (0.10.21 and older) need numpy<2 and
protobuf<5, which the main environment cannot have, so this file runs on its own under the
interpreter of `.venv-mediapipe` (see `ferbench.mediapipe_client`). It imports only numpy,
cv2, mediapipe and the standard library. One process serves a whole dataset:

    request: one JSON line {"op": "detect" | "mesh", "shape": [h, w, 3], "box": [x, y, w, h]}
             ("box" for mesh only), then h*w*3 bytes of a BGR uint8 image
    reply:   one JSON line; detect: {"faces": [{"box", "score", "eyes"}, ...]} best first,
             eyes image-left first; mesh: {"points": 468 [x, y] or null}; all in image pixels
    on start it writes {"ready": "<mediapipe version>"}; a failed request gets {"error": ...}

It also runs as the workflow's `mediapipe_detect` rule, in MediaPipe's own conda environment:

    python mediapipe_worker.py detect-manifest MANIFEST.csv ROOT OUT.jsonl

writes one line {"image": name, "faces": [...] or null (unreadable)} per manifest row, which
the face stage reads instead of running the detector itself.
"""

import csv
import json
import sys

import cv2
import mediapipe as mp
import numpy as np

#: BlazeFace's short-range model (faces within ~2 m, i.e. at least ~1/8 of the frame):
#: the faces of FER datasets. The full-range model finds fewer of the synthetic faces.
DETECTOR_MODEL = 0
MIN_DETECTION_CONFIDENCE = 0.5

#: The face mesh looks at the face box grown by this factor (it finds the face itself inside).
MESH_CONTEXT = 1.6


def detect(detector, rgb: np.ndarray) -> list:
    """Every face BlazeFace finds: pixel box, score and its two eye keypoints."""
    height, width = rgb.shape[:2]
    result = detector.process(rgb)
    faces = []
    for detection in result.detections or []:
        data = detection.location_data
        box = data.relative_bounding_box
        eyes = sorted((k.x * width, k.y * height) for k in data.relative_keypoints[:2])
        faces.append({"box": [int(round(box.xmin * width)), int(round(box.ymin * height)),
                              int(round(box.width * width)), int(round(box.height * height))],
                      "score": round(float(detection.score[0]), 6),
                      "eyes": [[round(x, 3), round(y, 3)] for x, y in eyes]})
    return sorted(faces, key=lambda f: -f["score"])


def mesh(face_mesh, rgb: np.ndarray, box) -> list | None:
    """The 468 mesh points of the face in `box`, in pixels of the whole image, or None."""
    height, width = rgb.shape[:2]
    x, y, w, h = box
    side = max(w, h) * MESH_CONTEXT
    x0, y0 = max(0, int(x + w / 2 - side / 2)), max(0, int(y + h / 2 - side / 2))
    x1, y1 = min(width, int(x + w / 2 + side / 2)), min(height, int(y + h / 2 + side / 2))
    region = np.ascontiguousarray(rgb[y0:y1, x0:x1])
    result = face_mesh.process(region)
    if not result.multi_face_landmarks:
        return None
    rw, rh = x1 - x0, y1 - y0
    return [[round(p.x * rw + x0, 3), round(p.y * rh + y0, 3)]
            for p in result.multi_face_landmarks[0].landmark[:468]]


def serve(stdin, stdout) -> None:
    detector = _face_detection()
    face_mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1)
    stdout.write(json.dumps({"ready": mp.__version__}) + "\n")
    stdout.flush()
    for line in iter(stdin.readline, b""):
        header = json.loads(line)
        shape = tuple(header["shape"])
        data = stdin.read(int(np.prod(shape)))
        try:
            bgr = np.frombuffer(data, np.uint8).reshape(shape)
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            if header["op"] == "detect":
                reply = {"faces": detect(detector, rgb)}
            else:
                reply = {"points": mesh(face_mesh, rgb, header["box"])}
        except Exception as error:  # reported to the client, which raises it
            reply = {"error": f"{type(error).__name__}: {error}"}
        stdout.write(json.dumps(reply) + "\n")
        stdout.flush()


def _face_detection():
    return mp.solutions.face_detection.FaceDetection(
        model_selection=DETECTOR_MODEL, min_detection_confidence=MIN_DETECTION_CONFIDENCE)


def detect_manifest(manifest: str, root: str, out: str) -> None:
    """BlazeFace over every image a manifest names (a pixel-table row holds a face already
    cropped: such datasets take detector `none`)."""
    detector = _face_detection()
    with open(manifest, newline="") as rows, open(out, "w") as lines:
        for count, row in enumerate(csv.DictReader(rows), 1):
            name = row["image"]
            if ".csv#" in name.lower():
                sys.exit(f"mediapipe_detect: {name} is a pixel-table row, a face already "
                         "cropped: set the dataset's faces.detector to none")
            bgr = cv2.imread(f"{root}/{name}", cv2.IMREAD_COLOR)
            faces = None if bgr is None else detect(detector, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            lines.write(json.dumps({"image": name, "faces": faces}) + "\n")
            if count % 500 == 0:
                print(f"mediapipe_detect: {count} images", file=sys.stderr, flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["detect-manifest"]:
        detect_manifest(*sys.argv[2:5])
    else:
        serve(sys.stdin.buffer, sys.stdout)
