"""How long the near-duplicate leak audit takes at FER2013's size: hashing every face, then
each test face's nearest training face (256-bit dHash, Hamming distance).

FER2013: 28,709 Training faces, 7,178 PublicTest + PrivateTest faces, 48x48 grey. Random
faces stand in for them (the cost does not depend on the pixels).

    python benchmarks/audit.py [--train 28709] [--test 7178]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ferbench import audit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=28709)
    parser.add_argument("--test", type=int, default=7178)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (args.train + args.test, 48, 48), dtype=np.uint8)
    start = time.perf_counter()
    hashes = audit.dhash(faces)
    hashed = time.perf_counter() - start
    start = time.perf_counter()
    audit.nearest(hashes[args.train:], hashes[:args.train])
    searched = time.perf_counter() - start
    print(f"dhash: {len(faces)} faces in {hashed:.2f} s ({1e6 * hashed / len(faces):.1f} us/face)")
    print(f"nearest: {args.test} x {args.train} pairs in {searched:.2f} s "
          f"({1e9 * searched / (args.test * args.train):.2f} ns/pair)")


if __name__ == "__main__":
    main()
