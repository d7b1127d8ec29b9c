"""The homomorphic baseline the paper says randomisation beats: the same integer classifier
(protocol.FixedPointClassifier) evaluated on a Paillier-encrypted face with `phe`.

The client encrypts every pixel under its own key; the server computes Enc(W x + c) with
ciphertext powers and products; the client decrypts the class scores and takes the argmax.
It runs in one process, but every message is serialised as it would travel (JSON, base64
big-endian ciphertexts) and its bytes counted. It reveals the scores themselves to the
client, less protection than ours for the server, so the comparison flatters Paillier.
"""

from __future__ import annotations

import base64
import json

import numpy as np
from phe import paillier

from ferbench.privacy.protocol import FixedPointClassifier


def _encode(value: int, size: int) -> str:
    return base64.b64encode(value.to_bytes(size, "big")).decode("ascii")


def _decode(text: str) -> int:
    return int.from_bytes(base64.b64decode(text), "big")


class PaillierServer:
    def __init__(self, model: FixedPointClassifier):
        self.model = model

    def answer(self, request: bytes) -> bytes:
        """Enc(scores) from {"n": public modulus, "face": Enc(pixel) per pixel}."""
        message = json.loads(request)
        public_key = paillier.PaillierPublicKey(_decode(message["n"]))
        face = [paillier.EncryptedNumber(public_key, _decode(c)) for c in message["face"]]
        size = 2 * (public_key.n.bit_length() + 7) // 8
        scores = []
        for weights, offset in zip(self.model.weights, self.model.offsets):
            total = public_key.encrypt(int(offset), r_value=1)  # public constant: no noise needed
            for pixel, weight in zip(face, weights):
                total = total + pixel * int(weight)
            scores.append(_encode(total.ciphertext(be_secure=False), size))
        return json.dumps({"scores": scores}).encode()


class PaillierClient:
    def __init__(self, key_bits: int = 2048):
        self.key_bits = key_bits
        self.public_key, self.private_key = paillier.generate_paillier_keypair(n_length=key_bits)

    def request(self, pixels: np.ndarray) -> bytes:
        size = 2 * (self.public_key.n.bit_length() + 7) // 8
        face = [_encode(self.public_key.encrypt(int(p)).ciphertext(), size) for p in pixels]
        return json.dumps({"n": _encode(self.public_key.n, size // 2), "face": face}).encode()

    def decide(self, reply: bytes) -> int:
        scores = [self.private_key.raw_decrypt(_decode(c)) for c in json.loads(reply)["scores"]]
        n = self.public_key.n
        return int(np.argmax([s - n if s > n // 2 else s for s in scores]))
