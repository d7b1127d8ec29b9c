"""Private inference (docs/privacy.md): exact predictions over a real socket, a server view
that does not depend on the face, clear errors, the fixed-point math, the Paillier baseline
and the workflow rule."""

from __future__ import annotations

import json
import subprocess
import sys
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
from ferbench.privacy import paillier, protocol
from ferbench.privacy.client import PrivateClient, PrivateQueryError
from ferbench.privacy.faces import LABELS, synthetic_faces
from tests.workflow_helpers import run_snakemake, write_config
from tests.conftest import tiny_config

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


def deal_files(folder: Path, shape: protocol.Shape, count: int) -> tuple[Path, Path]:
    client_tuples, server_tuples = protocol.deal(shape, count)
    paths = folder / "client.npz", folder / "server.npz"
    protocol.save_tuples(paths[0], shape, client_tuples)
    protocol.save_tuples(paths[1], shape, server_tuples)
    return paths


@pytest.fixture
def server(trained, model, tmp_path):
    """`ferbench serve-private` in its own process; yields (URL, client randomness file)."""
    classifier_path = tmp_path / "classifier.npz"
    trained[0].save(classifier_path)
    client_file, server_file = deal_files(tmp_path, model.shape, len(trained[1]) + 4)
    process = subprocess.Popen(
        [sys.executable, "-m", "ferbench.cli", "serve-private", "--classifier",
         str(classifier_path), "--randomness", str(server_file), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), process.stderr.read()
        yield url, client_file
    finally:
        process.terminate()
        process.wait(timeout=10)


def run_in_process(model, pixels, client_tuple, server_tuple):
    """One whole query without HTTP: (what the server received, the class the client got)."""
    query = protocol.ServerQuery.start(model, server_tuple)
    masked_face = protocol.mask_face(pixels, client_tuple)
    scores = query.answer_scores(masked_face)
    differences = protocol.blinded_differences(query.matrix, pixels, scores, client_tuple)
    position = protocol.winning_position(differences, model.shape.classes)
    shift = (position - client_tuple.ot_choice) % model.shape.classes
    labels = query.answer_label(shift)
    return (masked_face, shift), protocol.unmask_label(labels, position, client_tuple,
                                                       model.shape.classes)


# -- fixed-point math ------------------------------------------------------------------------

def test_ring_bytes_round_trip_and_signed_reading():
    values = fp.random_ring(50)
    assert list(fp.from_bytes(fp.to_bytes(values))) == list(values)
    assert list(fp.signed(np.array([-5 % fp.MODULUS, 7, fp.MODULUS // 2], dtype=object))) == [
        -5, 7, -fp.MODULUS // 2]


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


def test_blinded_differences_keep_the_signs_of_the_score_gaps(trained, model):
    pixels = trained[1][0]
    client_tuples, server_tuples = protocol.deal(model.shape, 1)
    query = protocol.ServerQuery.start(model, server_tuples[0])
    scores = query.answer_scores(protocol.mask_face(pixels, client_tuples[0]))
    differences = protocol.blinded_differences(query.matrix, pixels, scores, client_tuples[0])
    plain = model.scores(pixels[None])[0]
    for (i, j), blinded in zip(protocol.pairs(model.shape.classes), differences):
        gap = plain[query.permutation[i]] - plain[query.permutation[j]]
        assert np.sign(blinded) == np.sign(gap) and abs(blinded) >= abs(gap)


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
    """Two faces of different predicted classes, many queries each: the masked pixels and the
    label shift the server receives pass two-sample tests; the same tests on the unmasked
    pixels and the unshifted winning class tell the faces apart (so these tests can fail)."""
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
        views[name] = (np.array([masked for masked, _ in received], dtype=float) / fp.MODULUS,
                       np.array([shift for _, shift in received]))
    masked = [views[name][0] for name in views]
    assert stats.ks_2samp(masked[0].ravel(), masked[1].ravel()).pvalue > 1e-3
    assert stats.ks_2samp(masked[0][:, telling], masked[1][:, telling]).pvalue > 1e-3
    shifts = [np.bincount(views[name][1], minlength=model.shape.classes) for name in views]
    assert stats.chi2_contingency(shifts).pvalue > 1e-3
    # Controls: the same tests on what masking hides, the pixel and the unshifted class.
    raw = [np.full(queries, face[telling], dtype=float) for face in (first, second)]
    assert stats.ks_2samp(*raw).pvalue < 1e-6
    winners = [np.bincount(np.full(queries, k), minlength=model.shape.classes)
               for k in (classifier.predict(first[None])[0],
                         classifier.predict(second[None])[0])]
    assert stats.chi2_contingency(np.array(winners) + 1).pvalue < 1e-6


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
        ("/offline", b"{}", "lacks the field 'tuple'"),
        ("/offline", json.dumps({"tuple": "forged"}).encode(), "unknown randomness tuple"),
        ("/scores", json.dumps({"tuple": tuple_id, "face": "AA=="}).encode(), "no open query"),
    ]
    for route, body, reason in cases:
        status, reply = post(url, route, body)
        assert status == 400 and reason in reply["error"], (route, body, reply)
    assert post(url, "/offline", json.dumps({"tuple": tuple_id}).encode())[0] == 200
    later = [
        ("/offline", {"tuple": tuple_id}, "already used"),
        ("/label", {"tuple": tuple_id, "shift": 0}, "scores come before label"),
        ("/scores", {"tuple": tuple_id, "face": "***"}, "not valid base64"),
        ("/scores", {"tuple": tuple_id, "face": "AAAA"}, f"{model.shape.pixels} ring elements"),
        ("/scores", {"tuple": tuple_id, "face": 5}, "face must be a str"),
    ]
    for route, message, reason in later:
        status, reply = post(url, route, json.dumps(message).encode())
        assert status == 400 and reason in reply["error"], (route, message, reply)
    face = protocol.pack(fp.random_ring(model.shape.pixels))
    assert post(url, "/scores", json.dumps({"tuple": tuple_id, "face": face}).encode())[0] == 200
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
