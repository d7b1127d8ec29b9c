"""Integers modulo 2^64 and the fixed-point encoding of the server's floats.

The paper masks integers with one-time pads and scales the server's floats by a large factor
s before rounding (§3.4, `u^T s v + s p`). Here s = 2^frac_bits and every masked or shared
value lives in the ring Z_q, q = 2^64, held in numpy uint64 arrays (whose arithmetic wraps
modulo 2^64 by itself): a uniformly random pad hides any ring element perfectly, and results
are read back as signed integers in [-q/2, q/2).
"""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np

RING_BITS = 64
MODULUS = 1 << RING_BITS
ELEMENT_BYTES = RING_BITS // 8
RING = np.dtype("<u8")
#: Largest weight after scaling, in bits: rounding then costs at most 2^-25 of the weight range.
WEIGHT_BITS = 24


def random_ring(count: int) -> np.ndarray:
    """`count` uniform elements of Z_q from the operating system's CSPRNG."""
    return from_bytes(os.urandom(count * ELEMENT_BYTES))


def expand_ring(seed: bytes, count: int) -> np.ndarray:
    """`count` pseudo-random elements of Z_q stretched from a 256-bit seed with SHAKE-256."""
    return from_bytes(hashlib.shake_256(seed).digest(count * ELEMENT_BYTES))


def to_ring(values) -> np.ndarray:
    """Integers (Python ints of any size, or numpy integers) reduced into Z_q."""
    flat = [int(v) % MODULUS for v in np.ravel(np.asarray(values, dtype=object))]
    return np.array(flat, dtype=RING).reshape(np.shape(values))


def to_bytes(values: np.ndarray) -> bytes:
    """Ring elements as 8-byte little-endian words, row-major."""
    return np.ascontiguousarray(values, dtype=RING).tobytes()


def from_bytes(raw: bytes) -> np.ndarray:
    """Inverse of `to_bytes` (a flat, writable uint64 array)."""
    if len(raw) % ELEMENT_BYTES:
        raise ValueError(f"{len(raw)} bytes is not a whole number of {ELEMENT_BYTES}-byte "
                         "ring elements")
    return np.frombuffer(raw, dtype=RING).astype(np.uint64)


def signed(values: np.ndarray) -> np.ndarray:
    """Ring elements read as integers in [-q/2, q/2)."""
    return np.asarray(values, dtype=np.uint64).view(np.int64)


def frac_bits_for(weights: np.ndarray) -> int:
    """The scale s = 2^frac_bits that maps the largest |weight| to about 2^WEIGHT_BITS."""
    largest = float(np.max(np.abs(weights)))
    if not math.isfinite(largest) or largest == 0:
        raise ValueError("classifier weights must be finite and not all zero")
    return WEIGHT_BITS - math.ceil(math.log2(largest))


def encode(values: np.ndarray, frac_bits: int) -> np.ndarray:
    """round(values * 2^frac_bits) as exact Python integers (object array)."""
    scaled = np.rint(np.ldexp(np.asarray(values, dtype=np.float64), frac_bits))
    return np.array([int(v) for v in scaled.ravel()], dtype=object).reshape(scaled.shape)


def decode(values: np.ndarray, frac_bits: int) -> np.ndarray:
    """Signed integers back to floats (divided by s, as the paper's last step)."""
    return np.array([math.ldexp(int(v), -frac_bits) for v in np.ravel(values)]).reshape(
        np.shape(values))
