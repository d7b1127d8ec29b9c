"""Private inference cost: plaintext vs ours (additive shares + dealer-assisted secure
comparison, client and server in separate processes over HTTP) vs Paillier (phe, in-process
with serialised messages), on synthetic faces; then a concurrent load test of our server.

    .venv/bin/python benchmarks/private.py [--queries 40] [--paillier-queries 1]
        [--key-bits 2048] [--size 24] [--load-clients 8] [--load-queries 50]

Prints, per query: latency (ms), body bytes in each direction, round trips between client
and server, test accuracy; for ours the online phase (the face exists), the offline phase
(the dealer's tuple and the server's W_pi - A) and the dealer's bytes to each party; then
the load test's throughput, with every answer checked and every tuple spent once.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from ferbench.privacy import classifier as classifier_mod
from ferbench.privacy import comparison, paillier, protocol, server
from ferbench.privacy.client import PrivateClient, classify_concurrently
from ferbench.privacy.faces import LABELS, synthetic_faces

#: Round trips per query: plaintext and Paillier send the face and get the answer back; ours
#: fetches W_pi - A offline, then runs the comparison and the oblivious transfer online.
ROUNDS = {"plain": 1, "online": 2, "offline": 1, "paillier": 1}


def measure_ours(model, pixels, folder: Path) -> dict:
    """Dealer, offline and online phases of len(pixels) queries against a server process."""
    fixed = protocol.FixedPointClassifier.from_classifier(model)
    n = len(pixels)
    start = time.perf_counter()
    protocol.deal_files(fixed.shape, n, [folder / "client.npz"], folder / "server.npz")
    deal_seconds = (time.perf_counter() - start) / n
    dealt = [(folder / f"{party}.npz").stat().st_size / n for party in ("client", "server")]
    model.save(folder / "classifier.npz")
    process, url = server.spawn(folder / "classifier.npz", folder / "server.npz")
    try:
        client = PrivateClient(url, folder / "client.npz")
        offline_seconds = online_seconds = 0.0
        predictions = []
        for face in pixels:
            start = time.perf_counter()
            prepared = client.prepare()
            middle = time.perf_counter()
            predictions.append(client.classify(face, prepared))
            offline_seconds += middle - start
            online_seconds += time.perf_counter() - middle
    finally:
        process.terminate()
        process.wait(timeout=10)
    return {"predictions": predictions, "online": online_seconds / n,
            "offline": offline_seconds / n, "deal": deal_seconds, "dealt": dealt,
            "online_bytes": (client.online.sent / n, client.online.received / n),
            "offline_bytes": (client.offline.sent / n, client.offline.received / n)}


def measure_paillier(fixed, pixels, key_bits: int) -> dict:
    start = time.perf_counter()
    client = paillier.PaillierClient(key_bits)
    keygen = time.perf_counter() - start
    paillier_server = paillier.PaillierServer(fixed)
    sent = received = 0
    predictions = []
    start = time.perf_counter()
    for face in pixels:
        request = client.request(face)
        reply = paillier_server.answer(request)
        predictions.append(client.decide(reply))
        sent, received = sent + len(request), received + len(reply)
    m = len(pixels)
    return {"predictions": predictions, "seconds": (time.perf_counter() - start) / m,
            "bytes": (sent / m, received / m), "keygen": keygen}


def load_test(model, pixels, folder: Path, clients: int, queries: int) -> tuple[float, int]:
    """`clients` concurrent clients x `queries` faces each against one server process:
    (queries per second, tuples spent); raises if an answer or the spending is wrong."""
    fixed = protocol.FixedPointClassifier.from_classifier(model)
    faces = pixels[np.arange(queries) % len(pixels)]
    client_files = [folder / f"client{k}.npz" for k in range(clients)]
    protocol.deal_files(fixed.shape, clients * queries, client_files, folder / "server.npz")
    model.save(folder / "classifier.npz")
    process, url = server.spawn(folder / "classifier.npz", folder / "server.npz")
    try:
        answers, seconds = classify_concurrently(url, client_files, faces)
    finally:
        process.terminate()
        process.wait(timeout=10)
    expected = list(model.predict(faces))
    if any(answer != expected for answer in answers):
        raise SystemExit("load test: a private answer differs from the plaintext classifier")
    spent = (folder / "server.npz.used").read_text().split()
    if len(spent) != clients * queries or len(set(spent)) != len(spent):
        raise SystemExit(f"load test: {len(spent)} tuples spent, {len(set(spent))} distinct")
    return clients * queries / seconds, len(spent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=40, help="test faces for plain and ours")
    parser.add_argument("--paillier-queries", type=int, default=1)
    parser.add_argument("--key-bits", type=int, default=2048)
    parser.add_argument("--size", type=int, default=classifier_mod.DEFAULT_SIZE)
    parser.add_argument("--load-clients", type=int, default=8)
    parser.add_argument("--load-queries", type=int, default=50, help="queries per client")
    args = parser.parse_args()
    for name in ("queries", "paillier_queries", "load_clients", "load_queries"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, "
                         f"got {getattr(args, name)}")

    images, labels, subjects = synthetic_faces(identities=8, per_class=4, size=48, seed=0)
    train = subjects < 6
    model = classifier_mod.train(images[train], labels[train], LABELS, size=args.size)
    pixels, truth = model.preprocess(images[~train])[:args.queries], labels[~train][:args.queries]
    fixed = protocol.FixedPointClassifier.from_classifier(model)

    start = time.perf_counter()
    plain = model.predict(pixels)
    plain_seconds = (time.perf_counter() - start) / len(pixels)
    with tempfile.TemporaryDirectory() as folder:
        ours = measure_ours(model, pixels, Path(folder))
    assert ours["predictions"] == list(plain), "private predictions differ from plaintext"
    baseline = measure_paillier(fixed, pixels[:args.paillier_queries], args.key_bits)
    m = len(baseline["predictions"])
    assert baseline["predictions"] == list(plain[:m]), "Paillier predictions differ"
    with tempfile.TemporaryDirectory() as folder:
        throughput, spent = load_test(model, pixels, Path(folder), args.load_clients,
                                      args.load_queries)

    n = len(pixels)
    accuracy = np.mean(plain == truth)
    rows = [("plaintext (face sent in clear)", plain_seconds, model.pixels, 1,
             ROUNDS["plain"], f"{accuracy:.3f}", n),
            ("ours online (HTTP, 2 processes)", ours["online"], *ours["online_bytes"],
             ROUNDS["online"], f"{accuracy:.3f}", n),
            ("ours offline (dealer + W_pi - A)", ours["offline"] + ours["deal"],
             *ours["offline_bytes"], ROUNDS["offline"], "-", n),
            (f"Paillier {args.key_bits}-bit (in-process)", baseline["seconds"],
             *baseline["bytes"], ROUNDS["paillier"],
             f"{np.mean(np.array(baseline['predictions']) == truth[:m]):.3f}", m)]
    print(f"{model.pixels} pixels ({args.size}x{args.size}) x {len(LABELS)} classes, "
          f"{fixed.shape.pairs} secure comparisons per query (DCF over "
          f"{comparison.DOMAIN_BITS} bits), ring 2^64, "
          f"scale 2^{fixed.frac_bits}, ranking scores within {fixed.ranking_bits} bits; "
          f"Paillier key generation {baseline['keygen'] * 1000:.0f} ms not counted")
    print(f"{'method':36} {'ms/query':>10} {'bytes up':>10} {'bytes down':>11} {'rounds':>7} "
          f"{'accuracy':>9} {'queries':>8}")
    for name, seconds, up, down, rounds, shown, count in rows:
        print(f"{name:36} {seconds * 1000:10.2f} {up:10.0f} {down:11.0f} {rounds:7d} "
              f"{shown:>9} {count:8d}")
    print(f"dealer: {ours['deal'] * 1000:.2f} ms/query; its files hold "
          f"{ours['dealt'][0]:.0f} bytes/query for the client, {ours['dealt'][1]:.0f} for the "
          "server (delivered offline, before the face exists)")
    print("ours and Paillier return exactly the plaintext classifier's classes on these faces")
    print(f"speed-up vs Paillier: {baseline['seconds'] / ours['online']:.0f}x online, "
          f"{baseline['seconds'] / (ours['online'] + ours['offline'] + ours['deal']):.0f}x "
          "online + offline + dealer")
    print(f"load test: {args.load_clients} concurrent clients x {args.load_queries} queries: "
          f"{throughput:.1f} queries/s, every answer equal to plaintext, {spent} tuples each "
          "spent once")


if __name__ == "__main__":
    main()
