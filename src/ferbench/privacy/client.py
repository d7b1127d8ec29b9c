"""`ferbench query-private`: the client's half of the protocol, over HTTP."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ferbench.privacy import protocol
from ferbench.privacy.classifier import preprocess
from ferbench.privacy.protocol import ProtocolError


class PrivateQueryError(RuntimeError):
    """The server refused a message, or answered one that does not fit the protocol."""


@dataclass
class Traffic:
    """Body bytes per direction (HTTP headers, about 200 bytes a request, not counted)."""

    sent: int = 0
    received: int = 0


@dataclass
class Prepared:
    """A query's offline part: its tuple and the server's masked rows W_pi - A."""

    randomness: protocol.ClientTuple
    matrix: np.ndarray


@dataclass
class PrivateClient:
    server: str
    randomness_path: Path
    timeout: float = 60.0
    offline: Traffic = field(default_factory=Traffic)
    online: Traffic = field(default_factory=Traffic)

    def __post_init__(self):
        self.server = self.server.rstrip("/")
        self.info = self._call("GET", "/info", None, Traffic())
        shape, tuples = protocol.load_tuples(self.randomness_path, "client")
        served = protocol.Shape(self.info["pixels"], self.info["classes"])
        if shape != served:
            raise PrivateQueryError(f"{self.randomness_path} was dealt for {shape.pixels} "
                                    f"pixels x {shape.classes} classes; the server's classifier"
                                    f" has {served.pixels} x {served.classes}")
        self.shape = shape
        self.used = protocol.UsedTuples(self.randomness_path)
        self.unused = [t for tuple_id, t in tuples.items() if tuple_id not in self.used.ids]

    def prepare(self) -> Prepared:
        """The offline step of the next query: spend a tuple, fetch W_pi - A."""
        if not self.unused:
            raise PrivateQueryError(f"every randomness tuple in {self.randomness_path} is used;"
                                    " deal new ones with `ferbench deal-private`")
        randomness = self.unused.pop(0)
        self.used.spend(randomness.tuple_id)
        reply = self._call("POST", "/offline", {"tuple": randomness.tuple_id}, self.offline)
        matrix = self._parse(protocol.unpack, reply, "matrix",
                             self.shape.classes * self.shape.pixels)
        return Prepared(randomness, matrix.reshape(self.shape.classes, self.shape.pixels))

    def classify(self, pixels: np.ndarray, prepared: Prepared | None = None) -> int:
        """The class index of one face (uint8 pixels as the classifier reads them): two
        round trips, the secure comparison and the oblivious transfer of the class."""
        pixels = np.asarray(pixels).ravel()
        if pixels.shape != (self.shape.pixels,) or pixels.dtype != np.uint8:
            raise ValueError(f"a face is {self.shape.pixels} uint8 pixels, got {pixels.dtype} "
                             f"{pixels.shape}")
        prepared = prepared or self.prepare()
        randomness = prepared.randomness
        differences = protocol.masked_differences(prepared.matrix, pixels, randomness)
        reply = self._call("POST", "/compare", {
            "tuple": randomness.tuple_id,
            "face": protocol.pack(protocol.mask_face(pixels, randomness)),
            "differences": protocol.pack(differences)}, self.online)
        opened = self._parse(protocol.unpack, reply, "opened", self.shape.pairs)
        server_bits = self._parse(protocol.unpack_bits, reply, "bits", self.shape.pairs)
        losing = protocol.losing_bits(opened, server_bits, randomness)
        position = protocol.winning_position(losing, self.shape.classes)
        shift = (position - randomness.ot_choice) % self.shape.classes
        reply = self._call("POST", "/label", {"tuple": randomness.tuple_id, "shift": shift},
                           self.online)
        labels = reply.get("labels")
        if (not isinstance(labels, list) or len(labels) != self.shape.classes
                or not all(isinstance(v, int) and 0 <= v < self.shape.classes for v in labels)):
            raise PrivateQueryError(f"server sent malformed masked labels: {labels!r:.200}")
        return protocol.unmask_label(labels, position, randomness, self.shape.classes)

    def classify_images(self, paths) -> list[str]:
        """Class names of face-crop image files (greyscale, resized as in training)."""
        names = []
        for path in paths:
            image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            if image is None:
                raise PrivateQueryError(f"cannot read an image from {path}")
            names.append(self.info["labels"][self.classify(preprocess(image[None],
                                                                      self.info["size"])[0])])
        return names

    def _parse(self, read, reply: dict, key: str, count: int) -> np.ndarray:
        """Field `key` of a reply read with protocol.unpack or unpack_bits."""
        try:
            return read(reply, key, count)
        except ProtocolError as error:
            raise PrivateQueryError(f"server sent a malformed reply: {error}") from error

    def _call(self, method: str, route: str, message: dict | None, traffic: Traffic) -> dict:
        data = None if message is None else json.dumps(message).encode()
        request = urllib.request.Request(self.server + route, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")
            try:
                detail = json.loads(detail)["error"]
            except (ValueError, KeyError, TypeError):
                pass
            raise PrivateQueryError(f"{route}: HTTP {error.code}: {detail}") from error
        except urllib.error.URLError as error:
            raise PrivateQueryError(f"cannot reach {self.server}: {error.reason}") from error
        traffic.sent += len(data or b"")
        traffic.received += len(body)
        try:
            return json.loads(body)
        except json.JSONDecodeError as error:
            raise PrivateQueryError(f"{route}: server reply is not JSON") from error


def classify_concurrently(server: str, randomness_paths: list, faces: np.ndarray
                          ) -> tuple[list[list[int]], float]:
    """A load test: one client per randomness file, each in its own thread, classifying every
    face of `faces`. Returns (the classes each client got, wall-clock seconds)."""
    clients = [PrivateClient(server, Path(path)) for path in randomness_paths]
    start = time.perf_counter()
    with ThreadPoolExecutor(len(clients)) as pool:
        answers = list(pool.map(lambda client: [client.classify(f) for f in faces], clients))
    return answers, time.perf_counter() - start
