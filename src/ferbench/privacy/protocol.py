"""Arithmetic, correlated randomness and message checks of the private classification
protocol; the HTTP layer is in server.py / client.py, the reasoning in docs/privacy.md.

One query evaluates the server's affine map scores = W x + c (classifier.py) on the
client's pixels x and reveals to the client only the winning class:

offline  dealer -> client: pads r (pixels), t (rows), OT choice e and key k_e
         dealer -> server: seed of A (rows x pixels), w = A r - t, OT keys k_0..k_{C-1}
         server -> client: V - A, where V holds one row rho_ij (W_pi(i) - W_pi(j)) per pair
                           i < j of a fresh random class permutation pi and fresh random
                           positive multipliers rho_ij
online   client -> server: x + r                                  (uniform in Z_q^pixels)
         server -> client: z = A (x + r) - w + offsets            (= A x + t + offsets)
         client: (V - A) x + z - t = V x + offsets, whose signs rank the permuted classes
         client -> server: (j - e) mod C for the winning position j  (uniform in Z_C)
         server -> client: (pi(i) + k_{(i - shift) mod C}) mod C for every position i
         client: pi(j) = that value at j minus k_e
"""

from __future__ import annotations

import base64
import binascii
import itertools
import os
import secrets
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ferbench.privacy import fixed_point as fp
from ferbench.privacy.classifier import LinearFaceClassifier

SEED_BYTES = 32
#: Fewest bits of spread the random multipliers must keep (else the classifier's integer
#: scores are too wide for the ring and the server refuses to start).
MIN_MULTIPLIER_BITS = 32
PIXEL_MAX = 255


class ProtocolError(ValueError):
    """A message that does not fit the protocol (answered with HTTP 400)."""


def pairs(classes: int) -> list[tuple[int, int]]:
    """The rows of V: position pairs i < j, in this public order."""
    return list(itertools.combinations(range(classes), 2))


@dataclass(frozen=True)
class Shape:
    """What both parties and the dealer agree on: pixels per face and number of classes."""

    pixels: int
    classes: int

    @property
    def rows(self) -> int:
        return len(pairs(self.classes))


# -- offline: the dealer's correlated randomness ----------------------------------------------

@dataclass(frozen=True)
class ClientTuple:
    tuple_id: str
    input_pad: np.ndarray   # r, pixels ring elements
    output_pad: np.ndarray  # t, rows ring elements
    ot_choice: int          # e
    ot_key: int             # k_e


@dataclass(frozen=True)
class ServerTuple:
    tuple_id: str
    matrix_seed: bytes      # A = SHAKE-256(seed), rows x pixels
    pad_product: np.ndarray  # w = A r - t
    ot_keys: np.ndarray     # k_0 .. k_{C-1}


def pad_matrix(seed: bytes, shape: Shape) -> np.ndarray:
    return fp.expand_ring(seed, shape.rows * shape.pixels).reshape(shape.rows, shape.pixels)


def deal(shape: Shape, count: int) -> tuple[list[ClientTuple], list[ServerTuple]]:
    """`count` one-time tuples of correlated randomness, one per future query."""
    clients, servers = [], []
    for _ in range(count):
        tuple_id = secrets.token_hex(8)
        seed = os.urandom(SEED_BYTES)
        input_pad, output_pad = fp.random_ring(shape.pixels), fp.random_ring(shape.rows)
        ot_keys = np.array([secrets.randbelow(shape.classes) for _ in range(shape.classes)])
        choice = secrets.randbelow(shape.classes)
        product = (pad_matrix(seed, shape).dot(input_pad) - output_pad) % fp.MODULUS
        clients.append(ClientTuple(tuple_id, input_pad, output_pad, choice, int(ot_keys[choice])))
        servers.append(ServerTuple(tuple_id, seed, product, ot_keys))
    return clients, servers


def save_tuples(path, shape: Shape, tuples: list) -> None:
    """One party's tuples in one .npz (`role` says whose; ring arrays as raw bytes)."""
    role = "client" if isinstance(tuples[0], ClientTuple) else "server"
    arrays = {"role": role, "pixels": shape.pixels, "classes": shape.classes,
              "ids": np.array([t.tuple_id for t in tuples])}
    if role == "client":
        arrays.update(
            input_pads=np.stack([_byte_array(t.input_pad) for t in tuples]),
            output_pads=np.stack([_byte_array(t.output_pad) for t in tuples]),
            ot_choices=np.array([t.ot_choice for t in tuples]),
            ot_keys=np.array([t.ot_key for t in tuples]))
    else:
        arrays.update(
            seeds=np.stack([np.frombuffer(t.matrix_seed, np.uint8) for t in tuples]),
            pad_products=np.stack([_byte_array(t.pad_product) for t in tuples]),
            ot_keys=np.stack([t.ot_keys for t in tuples]))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:  # np.savez would append .npz to other names
        np.savez(handle, **arrays)


def load_tuples(path, role: str) -> tuple[Shape, dict]:
    """(shape, tuples by id) of `role`'s file; a file of the other party is refused."""
    with np.load(path, allow_pickle=False) as data:
        if str(data["role"]) != role:
            raise ValueError(f"{path} holds the {data['role']}'s randomness, not the {role}'s")
        shape = Shape(int(data["pixels"]), int(data["classes"]))
        ids = [str(i) for i in data["ids"]]
        if role == "client":
            tuples = [ClientTuple(i, fp.from_bytes(r.tobytes()), fp.from_bytes(t.tobytes()),
                                  int(e), int(k))
                      for i, r, t, e, k in zip(ids, data["input_pads"], data["output_pads"],
                                               data["ot_choices"], data["ot_keys"])]
        else:
            tuples = [ServerTuple(i, s.tobytes(), fp.from_bytes(w.tobytes()), k)
                      for i, s, w, k in zip(ids, data["seeds"], data["pad_products"],
                                            data["ot_keys"])]
    return shape, {t.tuple_id: t for t in tuples}


def _byte_array(values: np.ndarray) -> np.ndarray:
    return np.frombuffer(fp.to_bytes(values), np.uint8)


class UsedTuples:
    """Tuple ids already spent, appended to `<randomness file>.used` so that no pad is ever
    used twice, not even across restarts (a reused pad would leak x - x')."""

    def __init__(self, randomness_path):
        self.path = Path(str(randomness_path) + ".used")
        self.ids = set(self.path.read_text().split()) if self.path.exists() else set()

    def spend(self, tuple_id: str) -> None:
        if tuple_id in self.ids:
            raise ProtocolError(f"randomness tuple {tuple_id} was already used")
        self.ids.add(tuple_id)
        with open(self.path, "a") as handle:
            handle.write(tuple_id + "\n")


# -- the server's side ------------------------------------------------------------------------

@dataclass(frozen=True)
class FixedPointClassifier:
    """The classifier's affine map in integers: W and c scaled by 2^frac_bits and rounded."""

    weights: np.ndarray  # (classes, pixels) Python ints
    offsets: np.ndarray  # (classes,) Python ints
    frac_bits: int

    @classmethod
    def from_classifier(cls, classifier: LinearFaceClassifier) -> FixedPointClassifier:
        weights, offsets = classifier.affine()
        frac_bits = fp.frac_bits_for(weights)
        return cls(fp.encode(weights, frac_bits), fp.encode(offsets, frac_bits), frac_bits)

    @property
    def shape(self) -> Shape:
        return Shape(self.weights.shape[1], self.weights.shape[0])

    def scores(self, pixels: np.ndarray) -> np.ndarray:
        """Integer scores of uint8 pixel rows (N, pixels) -> (N, classes)."""
        return np.asarray(pixels, dtype=object).dot(self.weights.T) + self.offsets

    @cached_property
    def multiplier_bits(self) -> int:
        """Bits of spread left for rho_ij: rho_ij * (score_i - score_j) must stay below
        q/2 in absolute value for every possible face."""
        widest = max(int(np.abs(self.weights[i] - self.weights[j]).sum() * PIXEL_MAX
                         + abs(self.offsets[i] - self.offsets[j])).bit_length()
                     for i, j in pairs(self.shape.classes))
        bits = fp.RING_BITS - 2 - widest
        if bits < MIN_MULTIPLIER_BITS:
            raise ValueError(f"score differences need {widest} bits; the {fp.RING_BITS}-bit "
                             f"ring leaves only {bits} bits for the random multipliers")
        return bits


def random_multiplier(bits: int) -> int:
    """rho uniform in [2^u, 2^(u+1)) with u uniform in [0, bits): log-uniform, so that
    rho * d hides the size of the score gap d up to a shift of its logarithm."""
    exponent = secrets.randbelow(bits)
    return (1 << exponent) + secrets.randbelow(1 << exponent)


@dataclass
class ServerQuery:
    """One query's server state, made fresh at the offline step and used once."""

    randomness: ServerTuple
    permutation: list[int]    # class at each position
    matrix: np.ndarray        # V - A, the offline message
    pad: np.ndarray           # A, for the online step
    row_offsets: np.ndarray
    answered_scores: bool = False

    @classmethod
    def start(cls, model: FixedPointClassifier, randomness: ServerTuple) -> ServerQuery:
        shape = model.shape
        permutation = list(range(shape.classes))
        secrets.SystemRandom().shuffle(permutation)
        bits = model.multiplier_bits
        rows, row_offsets = [], []
        for i, j in pairs(shape.classes):
            rho = random_multiplier(bits)
            a, b = permutation[i], permutation[j]
            rows.append((model.weights[a] - model.weights[b]) * rho)
            row_offsets.append((model.offsets[a] - model.offsets[b]) * rho)
        pad = pad_matrix(randomness.matrix_seed, shape)
        masked = (np.stack(rows) - pad) % fp.MODULUS
        return cls(randomness, permutation, masked, pad, np.array(row_offsets, dtype=object))

    def answer_scores(self, masked_face: np.ndarray) -> np.ndarray:
        """z = A (x + r) - w + offsets."""
        if self.answered_scores:
            raise ProtocolError(f"tuple {self.randomness.tuple_id} already answered its scores")
        self.answered_scores = True
        return (self.pad.dot(masked_face) - self.randomness.pad_product
                + self.row_offsets) % fp.MODULUS

    def answer_label(self, shift: int) -> list[int]:
        """The permuted class list under one-time keys rotated by the client's shift."""
        if not self.answered_scores:
            raise ProtocolError(f"tuple {self.randomness.tuple_id}: scores come before label")
        classes = len(self.permutation)
        keys = self.randomness.ot_keys
        return [int((self.permutation[i] + keys[(i - shift) % classes]) % classes)
                for i in range(classes)]


# -- the client's side ------------------------------------------------------------------------

def mask_face(pixels: np.ndarray, randomness: ClientTuple) -> np.ndarray:
    """x + r: uniform in Z_q whatever the face."""
    return (np.asarray(pixels, dtype=object) + randomness.input_pad) % fp.MODULUS


def blinded_differences(masked_matrix: np.ndarray, pixels: np.ndarray, server_scores,
                        randomness: ClientTuple) -> np.ndarray:
    """(V - A) x + z - t = V x + offsets: rho_ij (score_pi(i) - score_pi(j)), signed."""
    total = masked_matrix.dot(np.asarray(pixels, dtype=object)) + server_scores
    return fp.signed(total - randomness.output_pad)


def winning_position(differences: np.ndarray, classes: int) -> int:
    """The permuted position that beats every other (most wins; ties to the first)."""
    wins = np.zeros(classes, dtype=int)
    for (i, j), difference in zip(pairs(classes), differences):
        if difference > 0:
            wins[i] += 1
        elif difference < 0:
            wins[j] += 1
    return int(np.argmax(wins))


def unmask_label(masked_labels: list[int], position: int, randomness: ClientTuple,
                 classes: int) -> int:
    return (masked_labels[position] - randomness.ot_key) % classes


# -- messages -----------------------------------------------------------------------------------

def pack(values: np.ndarray) -> str:
    return base64.b64encode(fp.to_bytes(values)).decode("ascii")


def unpack(message: dict, key: str, count: int) -> np.ndarray:
    """A base64 ring array field of `message` holding exactly `count` elements."""
    text = field(message, key, str)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ProtocolError(f"{key} is not valid base64") from error
    if len(raw) != count * fp.ELEMENT_BYTES:
        raise ProtocolError(f"{key} must hold {count} ring elements ({count * fp.ELEMENT_BYTES}"
                            f" bytes), got {len(raw)} bytes")
    return fp.from_bytes(raw)


def field(message, key: str, kind: type):
    if not isinstance(message, dict) or key not in message:
        raise ProtocolError(f"message lacks the field {key!r}")
    value = message[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ProtocolError(f"{key} must be a {kind.__name__}, got {type(value).__name__}")
    return value
