"""Arithmetic, correlated randomness and message checks of the private classification
protocol; the HTTP layer is in server.py / client.py, the reasoning in docs/privacy.md.

One query evaluates the server's affine map y = W x + c (classifier.py, with ties broken
towards the lower class index) on the client's pixels x, leaves y additively shared between
the two parties, compares every pair of entries with a dealer-assisted secure comparison
(comparison.py) and reveals to the client only the winning class:

offline  dealer -> client: pads r (pixels), t (classes), sign-gate keys (pairs), OT choice e
                           and key k_e
         dealer -> server: seed of A (classes x pixels), w = A r - t, sign-gate keys (pairs),
                           OT keys k_0..k_{C-1}
         server -> client: W_pi - A, the server's rows in a fresh random class order pi
online   client -> server: x + r and, per position pair i < j, its masked share difference
                           u_ij = y^c_i - y^c_j + r^c_ij          (y^c = (W_pi - A) x - t)
         server -> client: m_ij = u_ij + y^s_i - y^s_j + r^s_ij = d_ij + r_ij, and its XOR
                           shares of [d_ij < 0]                   (y^s = A (x + r) - w + c_pi)
         client: its own shares give the bits [d_ij < 0]: a ranking of the permuted positions,
                 uniformly random because pi is; the winning position j
         client -> server: (j - e) mod C                          (uniform in Z_C)
         server -> client: (pi(i) + k_{(i - shift) mod C}) mod C for every position i
         client: pi(j) = that value at j minus k_e
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import itertools
import os
import secrets
import typing
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ferbench.privacy import comparison
from ferbench.privacy import fixed_point as fp
from ferbench.privacy.classifier import LinearFaceClassifier

SEED_BYTES = 32
PIXEL_MAX = 255


class ProtocolError(ValueError):
    """A message that does not fit the protocol (answered with HTTP 400)."""


def pairs(classes: int) -> list[tuple[int, int]]:
    """The compared position pairs i < j, in this public order."""
    return list(itertools.combinations(range(classes), 2))


def pair_differences(values: np.ndarray) -> np.ndarray:
    """values[i] - values[j] (mod 2^64) for every pair i < j, in `pairs` order."""
    first, second = np.array(pairs(len(values))).T
    return values[first] - values[second]


@dataclass(frozen=True)
class Shape:
    """What both parties and the dealer agree on: pixels per face and number of classes."""

    pixels: int
    classes: int

    @property
    def pairs(self) -> int:
        return self.classes * (self.classes - 1) // 2


# -- offline: the dealer's correlated randomness ----------------------------------------------

@dataclass(frozen=True)
class ClientTuple:
    tuple_id: str
    input_pad: np.ndarray   # r, pixels ring elements
    output_pad: np.ndarray  # t, classes ring elements
    signs: comparison.SignKeys  # the client's share of one sign gate per pair
    ot_choice: int          # e
    ot_key: int             # k_e


@dataclass(frozen=True)
class ServerTuple:
    tuple_id: str
    matrix_seed: np.ndarray  # SEED_BYTES uint8; A = SHAKE-256(seed), classes x pixels
    pad_product: np.ndarray  # w = A r - t
    signs: comparison.SignKeys  # the server's share of one sign gate per pair
    ot_keys: np.ndarray     # k_0 .. k_{C-1}


def pad_matrix(seed: np.ndarray, shape: Shape) -> np.ndarray:
    return fp.expand_ring(seed.tobytes(), shape.classes * shape.pixels).reshape(
        shape.classes, shape.pixels)


def deal(shape: Shape, count: int) -> tuple[list[ClientTuple], list[ServerTuple]]:
    """`count` one-time tuples of correlated randomness, one per future query."""
    if count < 1:
        raise ValueError(f"the number of queries to deal must be at least 1, got {count}")
    if shape.pixels < 1 or shape.classes < 2:
        raise ValueError(f"need at least 1 pixel and 2 classes, got {shape.pixels} pixels x "
                         f"{shape.classes} classes")
    server_signs, client_signs = comparison.deal_signs(count * shape.pairs)  # one batch
    clients, servers = [], []
    for k in range(count):
        tuple_id = secrets.token_hex(8)
        seed = np.frombuffer(os.urandom(SEED_BYTES), np.uint8)
        input_pad, output_pad = fp.random_ring(shape.pixels), fp.random_ring(shape.classes)
        gates = slice(k * shape.pairs, (k + 1) * shape.pairs)
        ot_keys = np.array([secrets.randbelow(shape.classes) for _ in range(shape.classes)])
        choice = secrets.randbelow(shape.classes)
        product = pad_matrix(seed, shape).dot(input_pad) - output_pad
        clients.append(ClientTuple(tuple_id, input_pad, output_pad, client_signs[gates], choice,
                                   int(ot_keys[choice])))
        servers.append(ServerTuple(tuple_id, seed, product, server_signs[gates], ot_keys))
    return clients, servers


def _columns(item, prefix: str = "") -> dict[str, np.ndarray]:
    """A tuple's fields as named arrays, nested dataclasses flattened with dotted names."""
    columns = {}
    for f in dataclasses.fields(item):
        value = getattr(item, f.name)
        if dataclasses.is_dataclass(value):
            columns.update(_columns(value, f"{prefix}{f.name}."))
        else:
            columns[prefix + f.name] = np.asarray(value)
    return columns


def _rebuild(cls, data, index: int, prefix: str = ""):
    """Inverse of `_columns` for the `index`-th tuple of a file's stacked columns."""
    values = {}
    for name, kind in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(kind):
            values[name] = _rebuild(kind, data, index, f"{prefix}{name}.")
        else:
            value = data[prefix + name][index]
            values[name] = kind(value) if kind in (int, str) else value
    return cls(**values)


def save_tuples(path, shape: Shape, tuples: list) -> None:
    """One party's tuples in one .npz (`role` says whose), each field stacked over tuples."""
    role = "client" if isinstance(tuples[0], ClientTuple) else "server"
    columns = [_columns(t) for t in tuples]
    arrays = {name: np.stack([c[name] for c in columns]) for name in columns[0]}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # Readable by its owner only; np.savez on a path would append .npz to other names.
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
        np.savez(handle, role=role, pixels=shape.pixels, classes=shape.classes, **arrays)


def deal_files(shape: Shape, count: int, client_paths: list, server_path) -> None:
    """Deal `count` tuples: the server's all in `server_path`, the client's split evenly over
    `client_paths` (one file per concurrent client, so that no two clients spend one tuple)."""
    paths = [Path(p).resolve() for p in client_paths]
    if not paths:
        raise ValueError("at least one client randomness file is needed")
    if Path(server_path).resolve() in paths or len(set(paths)) != len(paths):
        raise ValueError("every party's randomness needs its own file")
    if count < len(client_paths):
        raise ValueError(f"{count} queries cannot be split over {len(client_paths)} clients")
    client_tuples, server_tuples = deal(shape, count)
    for k, path in enumerate(client_paths):
        save_tuples(path, shape, client_tuples[k::len(client_paths)])
    save_tuples(server_path, shape, server_tuples)


def load_tuples(path, role: str) -> tuple[Shape, dict]:
    """(shape, tuples by id) of `role`'s file; a file of the other party is refused."""
    with np.load(path, allow_pickle=False) as data:
        if str(data["role"]) != role:
            raise ValueError(f"{path} holds the {data['role']}'s randomness, not the {role}'s")
        shape = Shape(int(data["pixels"]), int(data["classes"]))
        cls = ClientTuple if role == "client" else ServerTuple
        columns = {name: data[name] for name in data.files}
        tuples = [_rebuild(cls, columns, k) for k in range(len(columns["tuple_id"]))]
    return shape, {t.tuple_id: t for t in tuples}


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

    def ranking_scores(self, pixels: np.ndarray) -> np.ndarray:
        """C * score_k + (C - 1 - k) of uint8 pixel rows: what the protocol compares. They
        are all distinct, and their argmax is numpy's argmax of the scores (ties to lower k)."""
        return self.scores(pixels) * self.shape.classes + self._tie_break

    @cached_property
    def ranking(self) -> tuple[np.ndarray, np.ndarray]:
        """(weights, offsets) of the ranking scores in Z_2^64."""
        return (fp.to_ring(self.weights * self.shape.classes),
                fp.to_ring(self.offsets * self.shape.classes + self._tie_break))

    @property
    def _tie_break(self) -> np.ndarray:
        return np.arange(self.shape.classes - 1, -1, -1)

    @cached_property
    def ranking_bits(self) -> int:
        """Bits of the widest possible ranking-score difference; the sign gate reads every
        difference in [-2^47, 2^47), so the server refuses to start above 46 (one bit spare)."""
        classes = self.shape.classes
        widest = max(int(np.abs(self.weights[i] - self.weights[j]).sum() * PIXEL_MAX
                         + abs(self.offsets[i] - self.offsets[j])) * classes + classes
                     for i, j in pairs(classes))
        bits = widest.bit_length()
        most = comparison.COMPARE_BITS - 2
        if bits > most:
            raise ValueError(f"score differences need {bits} bits; the secure comparison "
                             f"reads {comparison.COMPARE_BITS}-bit values, so at most {most}")
        return bits


@dataclass
class ServerQuery:
    """One query's server state, made fresh at the offline step and used once."""

    randomness: ServerTuple
    permutation: list[int]    # class at each position
    matrix: np.ndarray        # W_pi - A, the offline message
    pad: np.ndarray           # A, for the online step
    offsets: np.ndarray       # c_pi
    compared: bool = False

    @classmethod
    def start(cls, model: FixedPointClassifier, randomness: ServerTuple) -> ServerQuery:
        permutation = list(range(model.shape.classes))
        secrets.SystemRandom().shuffle(permutation)
        weights, offsets = model.ranking
        pad = pad_matrix(randomness.matrix_seed, model.shape)
        return cls(randomness, permutation, weights[permutation] - pad, pad,
                   offsets[permutation])

    def answer_compare(self, masked_face: np.ndarray,
                       masked_differences: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(opened m = d + r, the server's XOR shares of [d < 0]) for every pair, from x + r
        and the client's u; the server's score share is y^s = A (x + r) - w + c_pi."""
        if self.compared:
            raise ProtocolError(f"tuple {self.randomness.tuple_id} already answered its "
                                "comparison")
        self.compared = True
        share = self.pad.dot(masked_face) - self.randomness.pad_product + self.offsets
        signs = self.randomness.signs
        opened = masked_differences + pair_differences(share) + signs.mask
        return opened, comparison.sign_share(comparison.SERVER, signs, opened)

    def answer_label(self, shift: int) -> list[int]:
        """The permuted class list under one-time keys rotated by the client's shift."""
        if not self.compared:
            raise ProtocolError(f"tuple {self.randomness.tuple_id}: the comparison comes "
                                "before the label")
        classes = len(self.permutation)
        keys = self.randomness.ot_keys
        return [int((self.permutation[i] + keys[(i - shift) % classes]) % classes)
                for i in range(classes)]


# -- the client's side ------------------------------------------------------------------------

def mask_face(pixels: np.ndarray, randomness: ClientTuple) -> np.ndarray:
    """x + r: uniform in Z_q whatever the face."""
    return np.asarray(pixels).astype(np.uint64) + randomness.input_pad


def masked_differences(masked_matrix: np.ndarray, pixels: np.ndarray,
                       randomness: ClientTuple) -> np.ndarray:
    """u_ij = y^c_i - y^c_j + r^c_ij with y^c = (W_pi - A) x - t, the client's score share."""
    share = masked_matrix.dot(np.asarray(pixels).astype(np.uint64)) - randomness.output_pad
    return pair_differences(share) + randomness.signs.mask


def losing_bits(opened: np.ndarray, server_bits: np.ndarray,
                randomness: ClientTuple) -> np.ndarray:
    """[d_ij < 0] per pair: 1 where position i's ranking score is below position j's."""
    return comparison.sign_share(comparison.CLIENT, randomness.signs, opened) ^ server_bits


def winning_position(losing: np.ndarray, classes: int) -> int:
    """The permuted position that beats every other (ranking scores are all distinct)."""
    wins = np.zeros(classes, dtype=int)
    for (i, j), lost in zip(pairs(classes), losing):
        wins[j if lost else i] += 1
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


def pack_bits(bits: np.ndarray) -> str:
    return "".join("1" if b else "0" for b in bits)


def unpack_bits(message: dict, key: str, count: int) -> np.ndarray:
    """A field of exactly `count` characters 0 or 1."""
    text = field(message, key, str)
    if len(text) != count or set(text) - {"0", "1"}:
        raise ProtocolError(f"{key} must be {count} characters 0 or 1")
    return np.array([c == "1" for c in text], dtype=np.uint8)


def field(message, key: str, kind: type):
    if not isinstance(message, dict) or key not in message:
        raise ProtocolError(f"message lacks the field {key!r}")
    value = message[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ProtocolError(f"{key} must be a {kind.__name__}, got {type(value).__name__}")
    return value
