"""Private inference cost: plaintext vs randomisation (ours, over a real HTTP socket) vs
Paillier (phe, in-process with serialised messages), on synthetic faces.

    .venv/bin/python benchmarks/private.py [--queries 40] [--paillier-queries 1]
        [--key-bits 2048] [--size 24]

Prints latency per query (ms), body bytes per query in each direction, and test accuracy.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from ferbench.privacy import classifier as classifier_mod
from ferbench.privacy import paillier, protocol, server
from ferbench.privacy.client import PrivateClient
from ferbench.privacy.faces import LABELS, synthetic_faces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=40, help="test faces for plain and ours")
    parser.add_argument("--paillier-queries", type=int, default=1)
    parser.add_argument("--key-bits", type=int, default=2048)
    parser.add_argument("--size", type=int, default=classifier_mod.DEFAULT_SIZE)
    args = parser.parse_args()

    images, labels, subjects = synthetic_faces(identities=8, per_class=4, size=48, seed=0)
    train = subjects < 6
    model = classifier_mod.train(images[train], labels[train], LABELS, size=args.size)
    pixels, truth = model.preprocess(images[~train])[:args.queries], labels[~train][:args.queries]
    fixed = protocol.FixedPointClassifier.from_classifier(model)
    rows = []

    start = time.perf_counter()
    plain = model.predict(pixels)
    rows.append(("plaintext (face sent in clear)", (time.perf_counter() - start) / len(pixels),
                 model.pixels, 1, np.mean(plain == truth), len(pixels)))

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        client_tuples, server_tuples = protocol.deal(fixed.shape, len(pixels))
        deal_seconds = (time.perf_counter() - start) / len(pixels)
        for name, tuples in (("client", client_tuples), ("server", server_tuples)):
            protocol.save_tuples(Path(folder) / f"{name}.npz", fixed.shape, tuples)
        model.save(Path(folder) / "classifier.npz")
        service = server.PrivateClassifierService(
            classifier_mod.LinearFaceClassifier.load(Path(folder) / "classifier.npz"),
            Path(folder) / "server.npz")
        http = server.make_server(service)
        threading.Thread(target=http.serve_forever, daemon=True).start()
        client = PrivateClient(f"http://127.0.0.1:{http.server_address[1]}",
                               Path(folder) / "client.npz")
        offline_seconds = online_seconds = 0.0
        ours = []
        for face in pixels:
            start = time.perf_counter()
            prepared = client.prepare()
            middle = time.perf_counter()
            ours.append(client.classify(face, prepared))
            offline_seconds += middle - start
            online_seconds += time.perf_counter() - middle
        http.shutdown()
    n = len(pixels)
    assert ours == list(plain), "private predictions differ from the plaintext classifier"
    rows.append(("ours online (HTTP)", online_seconds / n, client.online.sent / n,
                 client.online.received / n, np.mean(np.array(ours) == truth), n))
    rows.append(("ours offline (dealer + V-A)", offline_seconds / n + deal_seconds,
                 client.offline.sent / n, client.offline.received / n, None, n))
    ours_total = online_seconds / n + offline_seconds / n + deal_seconds

    start = time.perf_counter()
    paillier_client = paillier.PaillierClient(args.key_bits)
    keygen = time.perf_counter() - start
    baseline = paillier.PaillierServer(fixed)
    sent = received = 0
    got = []
    start = time.perf_counter()
    for face in pixels[:args.paillier_queries]:
        request = paillier_client.request(face)
        reply = baseline.answer(request)
        got.append(paillier_client.decide(reply))
        sent, received = sent + len(request), received + len(reply)
    m = len(got)
    paillier_seconds = (time.perf_counter() - start) / m
    assert got == list(plain[:m]), "Paillier predictions differ from the plaintext classifier"
    rows.append((f"Paillier {args.key_bits}-bit (in-process)", paillier_seconds, sent / m,
                 received / m, np.mean(np.array(got) == truth[:m]), m))

    print(f"{model.pixels} pixels ({args.size}x{args.size}) x {len(LABELS)} classes, "
          f"{fixed.shape.rows} blinded pair rows, ring 2^128, scale 2^{fixed.frac_bits}; "
          f"Paillier encrypts the face (one ciphertext per pixel), key generation "
          f"{keygen * 1000:.0f} ms not counted")
    print(f"{'method':36} {'ms/query':>10} {'bytes up':>10} {'bytes down':>11} "
          f"{'accuracy':>9} {'queries':>8}")
    for name, seconds, up, down, accuracy, count in rows:
        shown = "-" if accuracy is None else f"{accuracy:.3f}"
        print(f"{name:36} {seconds * 1000:10.2f} {up:10.0f} {down:11.0f} {shown:>9} {count:8d}")
    print("Paillier and ours return exactly the plaintext classifier's classes on these faces.")
    print(f"speed-up vs Paillier: {paillier_seconds / (online_seconds / n):.0f}x online, "
          f"{paillier_seconds / ours_total:.0f}x online + offline")


if __name__ == "__main__":
    main()
