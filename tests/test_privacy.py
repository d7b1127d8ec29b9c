"""Private inference (docs/privacy.md): exact predictions over a real socket, a server view
that does not depend on the face, clear errors, a hardened server under concurrent load, the
fixed-point math and ranges, the Paillier baseline and the workflow rule. The secure
comparison itself is tested in test_privacy_comparison.py, the client's view (the attacks on
the old protocol step) in test_privacy_attack.py."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ferbench.privacy import classifier as classifier_mod
from ferbench.privacy import fixed_point as fp
from ferbench.privacy import comparison, paillier, protocol, server as server_mod
from ferbench.privacy.client import PrivateClient, PrivateQueryError, classify_concurrently
from ferbench.privacy.faces import LABELS, synthetic_faces
from tests.workflow_helpers import run_snakemake, write_config
from tests.conftest import CHANCE_P, tiny_config

TRAIN_SUBJECTS = 4


@pytest.fixture(scope="module")
def faces():
    return synthetic_faces(identities=6, per_class=3, size=48, seed=0)


@pytest.fixture(scope="module")
def trained(faces):
    images, labels, subjects = faces
    train = subjects < TRAIN_SUBJECTS
    model = classifier_mod.train(images[train], labels[train], LABELS)
    return model, model.preprocess(images[~train])


@pytest.fixture(scope="module")
def model(trained):
    return protocol.FixedPointClassifier.from_classifier(trained[0])


def deal_files(folder: Path, shape: protocol.Shape, count: int,
               clients: int = 1) -> tuple[list[Path], Path]:
    client_files = [folder / f"client{k}.npz" for k in range(clients)]
    protocol.deal_files(shape, count, client_files, folder / "server.npz")
    return client_files, folder / "server.npz"


def start_server(classifier, server_file: Path, folder: Path):
    """`ferbench serve-private` in its own process: (process, URL)."""
    classifier.save(folder / "classifier.npz")
    return server_mod.spawn(folder / "classifier.npz", server_file)


@pytest.fixture
def server(trained, model, tmp_path):
    """A server process with tuples for every test face and a few more; yields (URL, client
    randomness file)."""
    client_files, server_file = deal_files(tmp_path, model.shape, len(trained[1]) + 4)
    process, url = start_server(trained[0], server_file, tmp_path)
    try:
        yield url, client_files[0]
    finally:
        process.terminate()
        process.wait(timeout=10)


def run_in_process(model, pixels, client_tuple, server_tuple):
    """One whole query without HTTP: (what the server received, the class the client got)."""
    query = protocol.ServerQuery.start(model, server_tuple)
    masked_face = protocol.mask_face(pixels, client_tuple)
    differences = protocol.masked_differences(query.matrix, pixels, client_tuple)
    opened, server_bits = query.answer_compare(masked_face, differences)
    losing = protocol.losing_bits(opened, server_bits, client_tuple)
    position = protocol.winning_position(losing, model.shape.classes)
    shift = (position - client_tuple.ot_choice) % model.shape.classes
    labels = query.answer_label(shift)
    return (masked_face, differences, shift), protocol.unmask_label(labels, position,
                                                                    client_tuple,
                                                                    model.shape.classes)


# -- fixed-point math ------------------------------------------------------------------------

def test_ring_bytes_round_trip_and_signed_reading():
    values = fp.random_ring(50)
    assert list(fp.from_bytes(fp.to_bytes(values))) == list(values)
    assert list(fp.signed(fp.to_ring([-5, 7, fp.MODULUS // 2]))) == [-5, 7, -fp.MODULUS // 2]
    assert list(fp.to_ring([fp.MODULUS + 3, -1])) == [3, fp.MODULUS - 1]


def test_encode_decode_rounds_to_the_scale():
    floats = np.array([0.1234567, -3.5, 1e-9, 42.0])
    decoded = fp.decode(fp.encode(floats, 20), 20)
    assert np.all(np.abs(decoded - floats) <= 2.0 ** -21)


def test_integer_scores_match_the_float_scores_within_the_rounding_bound(trained, model):
    classifier, pixels = trained
    floats = classifier.scores(pixels)
    integers = fp.decode(model.scores(pixels), model.frac_bits)
    bound = (0.5 * pixels.sum(axis=1, keepdims=True) + 0.5) * 2.0 ** -model.frac_bits
    assert np.all(np.abs(integers - floats) <= bound)
    assert np.array_equal(np.argmax(integers, axis=1), classifier.predict(pixels))


def test_ranking_scores_are_distinct_and_rank_like_the_scores(trained, model):
    """The tie-break C * score + (C - 1 - k) keeps the argmax (ties to the lower class, as
    numpy's), makes every pair differ, and fits the comparison's signed 48-bit range."""
    pixels = trained[1]
    ranking = model.ranking_scores(pixels)
    assert np.array_equal(np.argmax(ranking.astype(float), axis=1),
                          np.argmax(model.scores(pixels).astype(float), axis=1))
    assert all(len(set(row)) == model.shape.classes for row in ranking)
    tied = protocol.FixedPointClassifier(np.zeros((3, 2), dtype=object),
                                         np.array([5, 5, 1], dtype=object), 0)
    assert list(tied.ranking_scores(np.zeros((1, 2), np.uint8))[0]) == [17, 16, 3]
    assert model.ranking_bits <= comparison.COMPARE_BITS - 2
    widest = max(abs(a - b) for row in ranking for a in row for b in row)
    assert widest.bit_length() <= model.ranking_bits


def test_a_classifier_too_wide_for_the_comparison_is_refused(model):
    wide = protocol.FixedPointClassifier(model.weights * (1 << 10), model.offsets, 0)
    with pytest.raises(ValueError, match="score differences need .* bits"):
        wide.ranking_bits


def test_comparison_bits_rank_the_permuted_positions(trained, model):
    pixels = trained[1][0]
    client_tuples, server_tuples = protocol.deal(model.shape, 1)
    query = protocol.ServerQuery.start(model, server_tuples[0])
    opened, server_bits = query.answer_compare(
        protocol.mask_face(pixels, client_tuples[0]),
        protocol.masked_differences(query.matrix, pixels, client_tuples[0]))
    losing = protocol.losing_bits(opened, server_bits, client_tuples[0])
    ranking = model.ranking_scores(pixels[None])[0]
    expected = [ranking[query.permutation[i]] < ranking[query.permutation[j]]
                for i, j in protocol.pairs(model.shape.classes)]
    assert list(losing.astype(bool)) == expected


# -- correctness over a real socket ----------------------------------------------------------

def test_private_predictions_equal_the_plaintext_classifier_over_http(trained, server):
    classifier, pixels = trained
    client = PrivateClient(server[0], server[1])
    private = [client.classify(face) for face in pixels]
    assert private == list(classifier.predict(pixels))
    assert client.online.sent > 0 and client.offline.received > 0


def test_query_private_cli_prints_each_images_class(trained, faces, server, tmp_path):
    classifier, _ = trained
    images = faces[0][faces[2] >= TRAIN_SUBJECTS][:2]
    files = [tmp_path / f"face{k}.png" for k in range(2)]
    for file, image in zip(files, images):
        cv2.imwrite(str(file), image)
    result = subprocess.run([sys.executable, "-m", "ferbench.cli", "query-private", "--server",
                             server[0], "--randomness", str(server[1]), *map(str, files)],
                            capture_output=True, text=True, timeout=60, check=True)
    expected = [LABELS[k] for k in classifier.predict(classifier.preprocess(images))]
    assert result.stdout.splitlines() == [f"{f}\t{label}" for f, label in zip(files, expected)]


# -- what the server sees --------------------------------------------------------------------

def test_server_view_does_not_depend_on_the_face(trained, model):
    """Two faces of different predicted classes, 150 queries each: the masked pixels, the
    masked score differences and the label shift the server receives pass two-sample tests;
    the same tests on the unmasked pixels and the unshifted winning class tell the faces
    apart (so these tests can fail)."""
    classifier, pixels = trained
    predicted = classifier.predict(pixels)
    first, second = pixels[0], pixels[int(np.flatnonzero(predicted != predicted[0])[0])]
    telling = int(np.argmax(np.abs(first.astype(int) - second.astype(int))))  # pixel
    queries = 150
    views = {}
    for name, face in (("first", first), ("second", second)):
        client_tuples, server_tuples = protocol.deal(model.shape, queries)
        received = [run_in_process(model, face, c, s)[0] for c, s in zip(client_tuples,
                                                                          server_tuples)]
        views[name] = [np.array([message[k] for message in received], dtype=float)
                       for k in range(3)]
    masked = [views[name][0] for name in views]
    assert stats.ks_2samp(masked[0].ravel(), masked[1].ravel()).pvalue > CHANCE_P
    assert stats.ks_2samp(masked[0][:, telling], masked[1][:, telling]).pvalue > CHANCE_P
    differences = [views[name][1] for name in views]
    assert stats.ks_2samp(differences[0].ravel(), differences[1].ravel()).pvalue > CHANCE_P
    shifts = [np.bincount(views[name][2].astype(int), minlength=model.shape.classes)
              for name in views]
    assert stats.chi2_contingency(shifts).pvalue > CHANCE_P
    # Controls: the same tests on what masking hides, the pixel and the unshifted class.
    raw = [np.full(queries, face[telling], dtype=float) for face in (first, second)]
    assert stats.ks_2samp(*raw).pvalue < CHANCE_P
    winners = [np.bincount(np.full(queries, k), minlength=model.shape.classes)
               for k in (classifier.predict(first[None])[0],
                         classifier.predict(second[None])[0])]
    assert stats.chi2_contingency(np.array(winners) + 1).pvalue < CHANCE_P


def test_in_process_protocol_gives_the_plaintext_class(trained, model):
    classifier, pixels = trained
    client_tuples, server_tuples = protocol.deal(model.shape, 5)
    got = [run_in_process(model, face, c, s)[1]
           for face, c, s in zip(pixels, client_tuples, server_tuples)]
    assert got == list(classifier.predict(pixels[:5]))


# -- bad input ---------------------------------------------------------------------------------

def post(url: str, route: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url + route, data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_malformed_or_tampered_messages_get_http_400_with_a_reason(model, server):
    url, client_file = server
    tuple_id = next(iter(protocol.load_tuples(client_file, "client")[1]))
    cases = [
        ("/offline", b"{not json", "not JSON"),
        ("/offline", b"\xff\xfe", "not JSON"),
        ("/offline", b"[" * 3000 + b"]" * 3000, "nested too deeply"),
        ("/offline", b"9" * 4400, "not JSON"),  # beyond Python's int-from-text limit
        ("/offline", b"[1, 2]", "lacks the field 'tuple'"),
        ("/offline", b"{}", "lacks the field 'tuple'"),
        ("/offline", json.dumps({"tuple": "forged"}).encode(), "unknown randomness tuple"),
        ("/compare", json.dumps({"tuple": tuple_id, "face": "AA=="}).encode(), "no open query"),
    ]
    for route, body, reason in cases:
        status, reply = post(url, route, body)
        assert status == 400 and reason in reply["error"], (route, body, reply)
    assert post(url, "/offline", json.dumps({"tuple": tuple_id}).encode())[0] == 200
    face = protocol.pack(fp.random_ring(model.shape.pixels))
    differences = protocol.pack(fp.random_ring(model.shape.pairs))
    later = [
        ("/offline", {"tuple": tuple_id}, "already used"),
        ("/label", {"tuple": tuple_id, "shift": 0}, "comparison comes before the label"),
        ("/compare", {"tuple": tuple_id, "face": "***"}, "not valid base64"),
        ("/compare", {"tuple": tuple_id, "face": "AAAA"}, f"{model.shape.pixels} ring elements"),
        ("/compare", {"tuple": tuple_id, "face": 5}, "face must be a str"),
        ("/compare", {"tuple": tuple_id, "face": face}, "lacks the field 'differences'"),
        ("/compare", {"tuple": tuple_id, "face": face,
                      "differences": protocol.pack(fp.random_ring(3))},
         f"{model.shape.pairs} ring elements"),
    ]
    for route, message, reason in later:
        status, reply = post(url, route, json.dumps(message).encode())
        assert status == 400 and reason in reply["error"], (route, message, reply)
    valid = {"tuple": tuple_id, "face": face, "differences": differences}
    assert post(url, "/compare", json.dumps(valid).encode())[0] == 200
    status, reply = post(url, "/compare", json.dumps(valid).encode())
    assert status == 400 and "already answered its comparison" in reply["error"]
    status, reply = post(url, "/label", json.dumps({"tuple": tuple_id, "shift": 99}).encode())
    assert status == 400 and "shift must be in" in reply["error"]
    assert post(url, "/nowhere", b"{}")[0] == 404


def test_client_raises_a_clear_error_when_the_server_refuses(trained, server):
    url, client_file = server
    client = PrivateClient(url, client_file)
    prepared = client.prepare()
    client.classify(trained[1][0], prepared)
    with pytest.raises(PrivateQueryError, match="HTTP 400: no open query"):
        client.classify(trained[1][0], prepared)  # the same one-time tuple again


def test_spent_randomness_is_never_used_again_by_a_new_client(trained, server):
    url, client_file = server
    first = PrivateClient(url, client_file)
    spent = first.prepare().randomness.tuple_id
    second = PrivateClient(url, client_file)
    assert spent not in {t.tuple_id for t in second.unused}


def test_randomness_of_the_other_party_is_refused(tmp_path):
    _, server_file = deal_files(tmp_path, protocol.Shape(16, 3), 1)
    with pytest.raises(ValueError, match="holds the server's randomness"):
        protocol.load_tuples(server_file, "client")


def test_saved_tuples_load_back_unchanged(tmp_path):
    shape = protocol.Shape(5, 3)
    client_tuples, _ = protocol.deal(shape, 2)
    protocol.save_tuples(tmp_path / "c.npz", shape, client_tuples)
    loaded = protocol.load_tuples(tmp_path / "c.npz", "client")[1][client_tuples[1].tuple_id]
    original = client_tuples[1]
    assert np.array_equal(loaded.input_pad, original.input_pad)
    assert np.array_equal(loaded.signs.dcf.seed_corrections,
                          original.signs.dcf.seed_corrections)
    assert (loaded.ot_choice, loaded.ot_key) == (original.ot_choice, original.ot_key)


def test_deal_private_writes_one_file_per_party_and_warns(tmp_path, capsys):
    from ferbench import cli

    command = ["deal-private", "--pixels", "16", "--classes", "3",
               "--client-out", str(tmp_path / "client.npz"),
               "--server-out", str(tmp_path / "server.npz")]
    assert cli.main([*command, "--queries", "2"]) == 0
    assert "holds the other's file" in capsys.readouterr().err
    assert len(protocol.load_tuples(tmp_path / "client.npz", "client")[1]) == 2
    assert len(protocol.load_tuples(tmp_path / "server.npz", "server")[1]) == 2
    assert (tmp_path / "server.npz").stat().st_mode & 0o077 == 0
    with pytest.raises(SystemExit) as refused:
        cli.main([*command, "--queries", "0"])
    assert refused.value.code == 2
    assert "--queries: must be at least 1, got 0" in capsys.readouterr().err
    assert cli.main([*command[:-1], str(tmp_path / "client.npz"), "--queries", "1"]) == 2
    assert "its own file" in capsys.readouterr().err


# -- a hardened server -------------------------------------------------------------------------

@pytest.fixture
def in_process_server(trained, model, tmp_path):
    """The HTTP server in a thread with a short stall timeout; yields (service, host, port)."""
    _, server_file = deal_files(tmp_path, model.shape, 1)
    service = server_mod.PrivateClassifierService(trained[0], server_file)
    http = server_mod.make_server(service, request_timeout=0.5)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        yield service, *http.server_address
    finally:
        http.shutdown()
        http.server_close()


def test_body_longer_than_the_largest_legitimate_message_is_refused(in_process_server):
    service, host, port = in_process_server
    url = f"http://{host}:{port}"
    shape = service.model.shape
    longest = json.dumps({"tuple": "0" * 16,
                          "face": protocol.pack(fp.random_ring(shape.pixels)),
                          "differences": protocol.pack(fp.random_ring(shape.pairs))})
    assert len(longest) < service.max_body_bytes < len(longest) + 2048
    status, reply = post(url, "/compare", longest.encode())
    assert status == 400 and "no open query" in reply["error"]  # read and parsed
    status, reply = post(url, "/compare", b" " * (service.max_body_bytes + 1))
    assert status == 400 and f"at most {service.max_body_bytes} bytes" in reply["error"]


def test_a_stalled_connection_is_closed_after_the_timeout(in_process_server):
    _, host, port = in_process_server
    with socket.create_connection((host, port), timeout=10) as stalled:
        stalled.sendall(b"POST /offline HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
        assert stalled.recv(1024) == b""  # closed by the server, not by our 10 s timeout


def test_concurrent_clients_all_get_the_plaintext_class_and_spend_each_tuple_once(
        trained, model, tmp_path):
    """4 clients x 10 queries at once against one server process (the full 8 x 50 with its
    throughput is in benchmarks/private.py)."""
    classifier, pixels = trained
    faces = pixels[:10]
    client_files, server_file = deal_files(tmp_path, model.shape, 40, clients=4)
    process, url = start_server(classifier, server_file, tmp_path)
    try:
        answers, _ = classify_concurrently(url, client_files, faces)
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert answers == [list(classifier.predict(faces))] * 4
    spent = (tmp_path / "server.npz.used").read_text().split()
    assert len(spent) == 40 and len(set(spent)) == 40


# -- Paillier baseline -------------------------------------------------------------------------

def test_paillier_baseline_computes_the_same_class(faces):
    images, labels, subjects = faces
    small = classifier_mod.train(images[subjects < TRAIN_SUBJECTS],
                                 labels[subjects < TRAIN_SUBJECTS], LABELS, size=6, components=8)
    model = protocol.FixedPointClassifier.from_classifier(small)
    pixels = small.preprocess(images[subjects >= TRAIN_SUBJECTS][:2])
    client, server = paillier.PaillierClient(key_bits=512), paillier.PaillierServer(model)
    got = [client.decide(server.answer(client.request(face))) for face in pixels]
    assert got == list(np.argmax(model.scores(pixels).astype(float), axis=1))


# -- the workflow rule -------------------------------------------------------------------------

def test_private_classifier_rule_runs_in_snakemake(faces, tmp_path):
    """The rule on a fold table written here (the upstream stages have their own tests)."""
    images, labels, subjects = faces
    results = tmp_path / "results"
    (results / "synthetic" / "faces").mkdir(parents=True)
    np.save(results / "synthetic" / "faces" / "faces.npy", images)
    folds = pd.DataFrame({"fold": 0, "uid": np.arange(len(images)),
                          "label": [LABELS[k] for k in labels],
                          "subject": [f"id{s:02d}" for s in subjects], "sequence": "s",
                          "role": np.where(subjects < TRAIN_SUBJECTS, "train", "test")})
    (results / "synthetic" / "subject_5fold").mkdir()
    folds.to_csv(results / "synthetic" / "subject_5fold" / "folds.csv", index=False)
    write_config(tmp_path, tiny_config(Path("results")))
    run_snakemake(tmp_path, "results/synthetic/subject_5fold/private/fold0/classifier.npz",
                  cores=1)
    accuracy = json.loads(
        (results / "synthetic" / "subject_5fold" / "private" / "fold0" / "accuracy.json")
        .read_text())
    assert accuracy["fixed_point_agreement"] == 1.0 and accuracy["test_accuracy"] > 1 / 7
    assert (results / "logs" / "private_classifier").exists()
    assert (results / "benchmarks" / "private_classifier").exists()
