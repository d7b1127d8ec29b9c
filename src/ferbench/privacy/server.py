"""`ferbench serve-private`: the server's half of the protocol over HTTP on 127.0.0.1.

Endpoints (JSON bodies; ring arrays as base64 of 16-byte little-endian words):
GET  /info     public shape: pixels, classes, face size, class names, ring bits
POST /offline  {"tuple"} -> {"matrix": W_pi - A}                (input-independent)
POST /compare  {"tuple", "face": x + r, "differences": u} -> {"opened": m, "bits": "0110.."}
POST /label    {"tuple", "shift": (j - e) mod C} -> {"labels": masked class list}
A message that does not fit (malformed, not JSON, nested too deep, longer than the largest
legitimate message, out of order) gets HTTP 400 with {"error": "<what is wrong>"}; a client
that stalls mid-request is dropped after REQUEST_TIMEOUT seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ferbench.privacy import fixed_point as fp
from ferbench.privacy import protocol
from ferbench.privacy.classifier import LinearFaceClassifier
from ferbench.privacy.protocol import ProtocolError

#: Seconds a connection may stall (reading a request or writing a reply) before it is closed.
REQUEST_TIMEOUT = 30.0
#: Bytes beyond the longest legitimate body: another client's JSON spacing, a longer tuple id.
BODY_SLACK = 1024


class PrivateClassifierService:
    """The server's protocol state: its model, its dealer tuples, the queries in flight."""

    def __init__(self, classifier: LinearFaceClassifier, randomness_path):
        self.classifier = classifier
        self.model = protocol.FixedPointClassifier.from_classifier(classifier)
        shape, self.tuples = protocol.load_tuples(randomness_path, "server")
        if shape != self.model.shape:
            raise ValueError(f"{randomness_path} was dealt for {shape.pixels} pixels x "
                             f"{shape.classes} classes; the classifier has "
                             f"{self.model.shape.pixels} x {self.model.shape.classes}")
        self.model.ranking_bits  # refuse to start when the ring is too narrow
        self.used = protocol.UsedTuples(randomness_path)
        self.queries: dict[str, protocol.ServerQuery] = {}
        self.lock = threading.Lock()

    def info(self) -> dict:
        return {"pixels": self.model.shape.pixels, "classes": self.model.shape.classes,
                "size": self.classifier.size, "labels": list(self.classifier.labels),
                "ring_bits": fp.RING_BITS}

    def offline(self, message: dict) -> dict:
        tuple_id = protocol.field(message, "tuple", str)
        with self.lock:
            if tuple_id not in self.tuples and tuple_id not in self.used.ids:
                raise ProtocolError(f"unknown randomness tuple {tuple_id!r}")
            self.used.spend(tuple_id)  # refuses a tuple spent before, even before a restart
            randomness = self.tuples.pop(tuple_id)
        query = protocol.ServerQuery.start(self.model, randomness)
        with self.lock:
            self.queries[tuple_id] = query
        return {"matrix": protocol.pack(query.matrix)}

    def compare(self, message: dict) -> dict:
        query = self._query(message)
        shape = self.model.shape
        face = protocol.unpack(message, "face", shape.pixels)
        differences = protocol.unpack(message, "differences", shape.pairs)
        with self.lock:
            opened, bits = query.answer_compare(face, differences)
        return {"opened": protocol.pack(opened), "bits": protocol.pack_bits(bits)}

    def label(self, message: dict) -> dict:
        query = self._query(message)
        shift = protocol.field(message, "shift", int)
        if not 0 <= shift < self.model.shape.classes:
            raise ProtocolError(f"shift must be in [0, {self.model.shape.classes}), got {shift}")
        with self.lock:
            labels = query.answer_label(shift)
            del self.queries[query.randomness.tuple_id]
        return {"labels": labels}

    def _query(self, message: dict) -> protocol.ServerQuery:
        tuple_id = protocol.field(message, "tuple", str)
        with self.lock:
            if tuple_id not in self.queries:
                raise ProtocolError(f"no open query for tuple {tuple_id!r} (offline step "
                                    "missing, or the query is finished)")
            return self.queries[tuple_id]

    @property
    def max_body_bytes(self) -> int:
        """The longest legitimate request body (a /compare) plus BODY_SLACK."""
        shape = self.model.shape
        longest = {"tuple": "0" * 16, "face": protocol.pack(fp.random_ring(shape.pixels)),
                   "differences": protocol.pack(fp.random_ring(shape.pairs))}
        return len(json.dumps(longest)) + BODY_SLACK


def make_server(service: PrivateClassifierService, port: int = 0,
                request_timeout: float = REQUEST_TIMEOUT) -> ThreadingHTTPServer:
    """An HTTP server on 127.0.0.1:`port` (0: any free port) answering `service`; a
    connection that stalls for `request_timeout` seconds is closed."""
    routes = {"/offline": service.offline, "/compare": service.compare,
              "/label": service.label}
    max_body = service.max_body_bytes

    class Handler(BaseHTTPRequestHandler):
        timeout = request_timeout  # set on the socket by StreamRequestHandler.setup

        def do_GET(self):
            if self.path == "/info":
                self._reply(HTTPStatus.OK, service.info())
            else:
                self._reply(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint {self.path}"})

        def do_POST(self):
            route = routes.get(self.path)
            if route is None:
                self._reply(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint {self.path}"})
                return
            try:
                self._reply(HTTPStatus.OK, route(self._message()))
            except ProtocolError as error:
                self._reply(HTTPStatus.BAD_REQUEST, {"error": str(error)})
            except TimeoutError:  # the body stalled: nobody is left to answer
                self.close_connection = True

        def _message(self) -> dict:
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit() or int(length) > max_body:
                self.close_connection = True  # the unread body must not be taken as a request
                raise ProtocolError(f"a body of at most {max_body} bytes with its "
                                    "Content-Length is required")
            try:
                return json.loads(self.rfile.read(int(length)))
            except RecursionError as error:
                raise ProtocolError("body is JSON nested too deeply") from error
            except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, huge numbers
                raise ProtocolError(f"body is not JSON: {error}") from error

        def _reply(self, status: HTTPStatus, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format, *args):  # noqa: A002 - the base class's name
            """Quiet: a log line per request would record when each face was queried."""

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


def serve(classifier_path, randomness_path, port: int,
          request_timeout: float = REQUEST_TIMEOUT) -> None:
    """Run until killed, printing the URL first (flushed, for whoever started us)."""
    service = PrivateClassifierService(LinearFaceClassifier.load(classifier_path),
                                       randomness_path)
    server = make_server(service, port, request_timeout)
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def spawn(classifier_path, randomness_path) -> tuple[subprocess.Popen, str]:
    """`ferbench serve-private` in a child process on a free port: (process, URL). The
    caller stops it by its PID (`process.terminate()`)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ferbench.cli", "serve-private", "--classifier",
         str(classifier_path), "--randomness", str(randomness_path), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = process.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        process.kill()
        raise RuntimeError(f"serve-private did not start: {process.stderr.read()[-2000:]}")
    return process, url
