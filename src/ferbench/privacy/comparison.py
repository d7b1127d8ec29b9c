"""Dealer-assisted secure comparison: the sign of a value additively shared over Z_2^64 and
known to lie in [-2^47, 2^47), output as XOR shares, so that only the party that gets both
shares learns the bit.

A distributed comparison function (DCF; Boyle, Chandran, Gilboa, Gupta, Ishai, Kumar, Rathee,
"Function Secret Sharing for Mixed-Mode and Fixed-Point Secure Computation", Eurocrypt 2021,
their DCF construction, here with output group Z_2) splits f(x) = [x < alpha] into two keys:
each key alone is pseudo-random (it hides alpha), and the two evaluations at any public x
XOR to f(x).

The sign gate (their comparison gate, in offline/online form) reads the low COMPARE_BITS = 48
bits: reduction modulo 2^48 maps the additive shares over Z_2^64 to shares over Z_2^48, and a
d in [-2^47, 2^47) is negative exactly when bit 47 of d mod 2^48 ("MSB") is set. The dealer
draws a mask r in Z_2^64, gives each party an additive share of r, an XOR share of MSB(r)
and one DCF key for alpha = r mod 2^47. Online the parties open m = d + r (uniform: r is
unseen) and, with every value taken modulo 2^48,

    [d < 0] = MSB(d) = MSB(m) xor MSB(r) xor [m mod 2^47 < r mod 2^47]       (borrow rule)

so each party's share is its DCF evaluation xor its share of MSB(r), and one party also xors
the public MSB(m). Comparing 48 bits instead of 64 costs 47 PRG levels instead of 63; the
server refuses a classifier whose score differences could leave the range.

Everything is vectorised over a batch of independent gates (one per pair of classes). The
PRG is BLAKE2b (keyed by a domain string) stretching a 128-bit seed into two seeds and four
bits, the length-doubling PRG the construction assumes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np

from ferbench.privacy import fixed_point as fp

SEED_BYTES = 16
#: Low bits of the ring the comparison reads: differences must lie in [-2^47, 2^47).
COMPARE_BITS = 48
#: Input bits of the DCF: the opened value modulo 2^(COMPARE_BITS - 1).
DOMAIN_BITS = COMPARE_BITS - 1
_LOW_MASK = np.uint64((1 << DOMAIN_BITS) - 1)
#: The PRG's hash, keyed by a domain string; copies of it are cheaper than new ones.
_PRG = hashlib.blake2b(digest_size=2 * SEED_BYTES + 1, person=b"ferbench-dcf-prg")
#: Which DCF key each party evaluates (the server also adds the public MSB(m)).
SERVER, CLIENT = 0, 1


@dataclass(frozen=True)
class DcfKeys:
    """One party's keys of a batch of B comparison functions on DOMAIN_BITS-bit inputs."""

    seeds: np.ndarray             # (B, SEED_BYTES) uint8: the party's root seed
    seed_corrections: np.ndarray  # (B, DOMAIN_BITS, SEED_BYTES) uint8: s_CW per level
    bit_corrections: np.ndarray   # (B, DOMAIN_BITS, 3) uint8: V_CW, t_CW^L, t_CW^R per level
    final: np.ndarray             # (B,) uint8: CW^(n+1)

    def __getitem__(self, gates: slice) -> DcfKeys:
        return DcfKeys(self.seeds[gates], self.seed_corrections[gates],
                       self.bit_corrections[gates], self.final[gates])


@dataclass(frozen=True)
class SignKeys:
    """One party's share of a batch of sign gates."""

    mask: np.ndarray  # (B,) uint64: additive share of the input mask r
    top_bit: np.ndarray  # (B,) uint8: XOR share of MSB(r)
    dcf: DcfKeys

    def __getitem__(self, gates: slice) -> SignKeys:
        return SignKeys(self.mask[gates], self.top_bit[gates], self.dcf[gates])


def _expand(seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """G(s) = s^L || s^R || (v^L, t^L, v^R, t^R) for every seed of a (B, SEED_BYTES) array."""
    raw = seeds.tobytes()
    digests = []
    for start in range(0, len(raw), SEED_BYTES):
        prg = _PRG.copy()
        prg.update(raw[start:start + SEED_BYTES])
        digests.append(prg.digest())
    words = np.frombuffer(b"".join(digests), np.uint8).reshape(len(seeds), 2 * SEED_BYTES + 1)
    flags = (words[:, -1:] >> np.arange(4, dtype=np.uint8)) & 1
    return words[:, :SEED_BYTES], words[:, SEED_BYTES:2 * SEED_BYTES], flags


def _random_seeds(count: int) -> np.ndarray:
    return np.frombuffer(os.urandom(count * SEED_BYTES), np.uint8).reshape(count, SEED_BYTES)


def _bits(values: np.ndarray) -> np.ndarray:
    """(B, DOMAIN_BITS) uint8: the bits of each value, the domain's most significant first."""
    shifts = np.arange(DOMAIN_BITS - 1, -1, -1, dtype=np.uint64)
    return ((values[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)


def generate_dcf(alphas: np.ndarray) -> tuple[DcfKeys, DcfKeys]:
    """Keys (server's, client's) of f_alpha(x) = [x < alpha] for each alpha < 2^47."""
    count = len(alphas)
    roots = [_random_seeds(count), _random_seeds(count)]
    seeds = [roots[0], roots[1]]
    controls = [np.zeros(count, np.uint8), np.ones(count, np.uint8)]
    path_value = np.zeros(count, np.uint8)  # V_alpha: XOR of both outputs along alpha's path
    seed_cw = np.empty((count, DOMAIN_BITS, SEED_BYTES), np.uint8)
    bit_cw = np.empty((count, DOMAIN_BITS, 3), np.uint8)
    alpha_bits = _bits(alphas)
    for level in range(DOMAIN_BITS):
        alpha_bit = alpha_bits[:, level]
        right = alpha_bit.astype(bool)  # keep the right child where alpha's bit is 1
        (left0, right0, flags0), (left1, right1, flags1) = _expand(seeds[0]), _expand(seeds[1])
        lose0 = np.where(right[:, None], left0, right0)
        lose1 = np.where(right[:, None], left1, right1)
        v_lose = np.where(right, flags0[:, 0] ^ flags1[:, 0], flags0[:, 2] ^ flags1[:, 2])
        v_keep = np.where(right, flags0[:, 2] ^ flags1[:, 2], flags0[:, 0] ^ flags1[:, 0])
        # Losing the left child (alpha's bit 1) means every x there is below alpha: output 1.
        v_cw = v_lose ^ path_value ^ alpha_bit
        path_value = path_value ^ v_keep ^ v_cw
        t_cw_left = flags0[:, 1] ^ flags1[:, 1] ^ alpha_bit ^ 1
        t_cw_right = flags0[:, 3] ^ flags1[:, 3] ^ alpha_bit
        t_cw_keep = np.where(right, t_cw_right, t_cw_left)
        s_cw = lose0 ^ lose1
        for party, (left, right_seed, flags) in enumerate(((left0, right0, flags0),
                                                           (left1, right1, flags1))):
            keep_seed = np.where(right[:, None], right_seed, left)
            keep_control = np.where(right, flags[:, 3], flags[:, 1])
            seeds[party] = keep_seed ^ (controls[party][:, None] * s_cw)
            controls[party] = keep_control ^ (controls[party] & t_cw_keep)
        seed_cw[:, level] = s_cw
        bit_cw[:, level] = np.stack([v_cw, t_cw_left, t_cw_right], axis=1)
    final = (seeds[0][:, 0] & 1) ^ (seeds[1][:, 0] & 1) ^ path_value
    return tuple(DcfKeys(roots[p], seed_cw, bit_cw, final) for p in (SERVER, CLIENT))


def evaluate_dcf(party: int, keys: DcfKeys, inputs: np.ndarray) -> np.ndarray:
    """This party's XOR share of [inputs < alpha] for each key of the batch."""
    seeds = keys.seeds
    control = np.full(len(seeds), party, np.uint8)
    value = np.zeros(len(seeds), np.uint8)
    input_bits = _bits(inputs).astype(bool)
    for level in range(DOMAIN_BITS):
        left, right, flags = _expand(seeds)
        correction = control[:, None] * keys.seed_corrections[:, level]
        v_cw, t_cw_left, t_cw_right = keys.bit_corrections[:, level].T
        go_right = input_bits[:, level]
        value = value ^ np.where(go_right, flags[:, 2], flags[:, 0]) ^ (control & v_cw)
        seeds = np.where(go_right[:, None], right, left) ^ correction
        control = np.where(go_right, flags[:, 3] ^ (control & t_cw_right),
                           flags[:, 1] ^ (control & t_cw_left))
    return value ^ (seeds[:, 0] & 1) ^ (control & keys.final)


def deal_signs(count: int) -> tuple[SignKeys, SignKeys]:
    """(server's, client's) shares of `count` sign gates, each with a fresh mask r."""
    mask = fp.random_ring(count)
    client_mask = fp.random_ring(count)
    top = _top_bit(mask)
    client_top = np.frombuffer(os.urandom(count), np.uint8) & 1
    server_dcf, client_dcf = generate_dcf(mask & _LOW_MASK)
    return (SignKeys(mask - client_mask, top ^ client_top, server_dcf),
            SignKeys(client_mask, client_top, client_dcf))


def sign_share(party: int, keys: SignKeys, opened: np.ndarray) -> np.ndarray:
    """This party's XOR share of [opened - r < 0], r the gate's mask, for opened - r in
    [-2^47, 2^47) (read modulo 2^48 as a signed value)."""
    share = evaluate_dcf(party, keys.dcf, opened & _LOW_MASK) ^ keys.top_bit
    if party == SERVER:
        share = share ^ _top_bit(opened)
    return share


def _top_bit(values: np.ndarray) -> np.ndarray:
    """Bit COMPARE_BITS - 1: the sign bit of values read modulo 2^COMPARE_BITS."""
    return ((values >> np.uint64(DOMAIN_BITS)) & np.uint64(1)).astype(np.uint8)
