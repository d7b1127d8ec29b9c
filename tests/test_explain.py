"""Attention maps, representations, the explain stage's figures, and the papers' numbers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from ferbench import explain, jobs, published, splits
from ferbench.data.adapters import ADAPTERS
from ferbench.data.manifest import CLASS_SETS
from ferbench.models import REGISTRY, get
from ferbench.models.base import FERModel, gradient_saliency

TINY = 1 / 16
#: Smallest input each model family builds at (STN localisation, VGG's five pools, Sabour's 28).
SIZES = {"deepfer": 32, "deep_emotion": 32, "mobilenet_cl": 32, "capsnet": 28}
CLASSES = 3


def build(name: str):
    spec = get(name)
    torch.manual_seed(0)
    overrides = {"input_size": SIZES.get(name, 64), "width": TINY}
    model = spec.build(CLASSES, spec.hyperparameters(
        {k: v for k, v in overrides.items() if k in spec.defaults}))
    if name == "damcnn":
        # A random SERD mask can be negative everywhere; ReLU(M . h) of non-negative trunk
        # features is then zero and the output constant. A positive bias lets the signal through.
        with torch.no_grad():
            model.serd.attention.bias.fill_(1.0)
    return model.eval(), overrides["input_size"], 1 + len(spec.extra_channels)


def batch(size: int, channels: int, n: int = 2) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


#: What each model must show and embed, beyond the saliency every model has.
EXPECTED = {
    "deepfer": ({"stn_warp", "stn_sampling"}, {"fc_feature": 64}),
    "deep_emotion": ({"stn_warp", "stn_sampling"}, {"fc_feature": 50}),
    "mobilenet_cl": (set(), {"pooled": 64}),
    "e2capsnet": ({"au_attention"}, {"capsule_lengths": CLASSES, "capsule_poses": 16 * CLASSES}),
    "avggnet": ({"au_attention"}, {"fc_feature": 256}),
    "capsnet": (set(), {"capsule_lengths": CLASSES, "capsule_poses": 16 * CLASSES}),
    "damcnn": ({"serd_mask"}, {"salient_features": 32 * 2 * 2, "high_level": 256}),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_maps_and_representations_have_the_promised_shapes(name, one_thread):
    model, size, channels = build(name)
    x = batch(size, channels)
    maps, sizes = EXPECTED[name]
    raw = model.attention_maps(x)
    assert set(raw) == maps | {"saliency"}
    resized = explain.resized_attention_maps(model, x)
    for key, value in resized.items():
        assert value.shape == (2, size, size), key
        assert np.isfinite(value).all(), key
    assert resized["saliency"].max() > 0  # a random net still depends on its input
    with torch.no_grad():
        features = model.representations(x)
    assert {k: tuple(v.shape) for k, v in features.items()} == {k: (2, d) for k, d in sizes.items()}


def test_every_registered_model_draws_a_saliency_map():
    assert all("attention_maps" in dir(spec.cls) for spec in REGISTRY.values())
    assert all(issubclass(spec.cls, FERModel) for spec in REGISTRY.values())


def test_damcnn_map_is_the_serd_mask_upsampled_bilinearly(one_thread):
    model, size, channels = build("damcnn")
    x = batch(size, channels)
    with torch.no_grad():
        _, mask = model.salient_features(x)
    maps = model.attention_maps(x)
    assert torch.equal(maps["serd_mask"], mask[:, 0])
    expected = F.interpolate(mask, size=(size, size), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(explain.resized_attention_maps(model, x)["serd_mask"],
                               expected[:, 0].numpy(), atol=1e-6)


def test_capsule_models_show_the_au_map_they_were_given(one_thread):
    model, size, channels = build("e2capsnet")
    x = batch(size, channels)
    np.testing.assert_allclose(model.attention_maps(x)["au_attention"], (x[:, 1] + 1) / 2)


def test_stn_at_identity_reads_every_pixel_once_and_warps_nothing(one_thread):
    model, size, channels = build("deepfer")
    x = batch(size, channels)
    maps = model.attention_maps(x)  # theta starts at the identity
    assert torch.allclose(maps["stn_warp"], x[:, 0], atol=1e-5)
    assert torch.allclose(maps["stn_sampling"], torch.ones(2, size, size), atol=1e-5)
    assert model.face_like_maps == ("stn_warp",)


class Linear(FERModel):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2 * 4 * 4, CLASSES)

    def forward(self, x):
        return self.layer(x.flatten(1))


def test_gradient_saliency_is_the_top_class_weight_of_a_linear_model():
    model = Linear()
    x = batch(4, 2)
    top = model(x).argmax(1)
    weights = model.layer.weight.detach().view(CLASSES, 2, 4, 4)
    saliency = gradient_saliency(model, x)
    assert torch.allclose(saliency, weights[top, 0].abs())  # the face channel only
    assert model.layer.weight.grad is None  # the model's own gradients stay untouched


def test_tsne_is_deterministic_for_a_seed():
    features = np.random.default_rng(0).normal(size=(40, 80))
    first, second = explain.tsne(features, seed=3), explain.tsne(features, seed=3)
    assert first.shape == (40, 2)
    np.testing.assert_array_equal(first, second)
    # A representation that carries nothing (a dead SERD mask: all zeros) is drawn as one
    # point instead of failing the stage.
    assert not explain.tsne(np.zeros((40, 80)), seed=3).any()


def test_samples_are_the_first_of_each_class():
    targets = np.array([2, 0, 0, 1, 2, 0, 1])
    assert explain.first_per_class(targets, 2, 3).tolist() == [1, 2, 3, 6, 0, 4]
    assert explain.evenly_per_class(targets, 4).tolist() == [0, 1, 2, 3]


# -- the explain stage on a saved model --------------------------------------------------------

LABELS = ["anger", "happiness", "surprise"]


@pytest.fixture(scope="module")
def fold_files(tmp_path_factory):
    """model.pt (train_fold's format), faces.npy and folds.csv of a tiny 3-class study."""
    folder = tmp_path_factory.mktemp("explain")
    torch.manual_seed(0)
    spec = get("deep_emotion")
    hp = spec.hyperparameters({"input_size": 32})
    model = spec.build(len(LABELS), hp)
    jobs.save_model(folder / "model.pt", "deep_emotion", LABELS, hp, model.state_dict(), {})
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, size=(30, 40, 40), dtype=np.uint8)
    np.save(folder / "faces.npy", faces)
    pd.DataFrame({"uid": range(30), "fold": 0, "role": ["train"] * 12 + ["test"] * 18,
                  "label": [LABELS[i % 3] for i in range(30)], "subject": "s",
                  "sequence": "q"}).to_csv(folder / "folds.csv", index=False)
    return folder


def run_explain(folder, out):
    config = {"device": "cpu", "seed": 0, "datasets": {"synthetic": {"adapter": "synthetic"}},
              "protocols": {"p": {"kind": "subject_kfold", "folds": 5, "class_set": "7",
                                  "frames": "all"}}}
    paths = {"faces": folder / "faces.npy", "folds": folder / "folds.csv",
             "model": folder / "model.pt", "attention": out / "attention.png",
             "tsne": out / "tsne.png", "info": out / "explain.json"}
    study = {"dataset": "synthetic", "protocol": "p", "model": "deep_emotion"}
    return jobs.explain_fold(study, 0, paths, config), paths


def test_explain_fold_writes_both_figures_and_its_record(fold_files, tmp_path, one_thread):
    info, paths = run_explain(fold_files, tmp_path)
    for key in ("attention", "tsne"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(paths["info"].read_text())
    assert saved == json.loads(json.dumps(info))
    assert saved["context"] == {"dataset": "synthetic", "protocol": "p", "model": "deep_emotion",
                                "adapter": "synthetic", "test_adapter": "synthetic",
                                "kind": "subject_kfold", "class_set": "7", "frames": "all",
                                "folds": 5}
    assert [s["label"] for s in saved["samples"]] == ["anger", "anger", "happiness",
                                                      "happiness", "surprise", "surprise"]
    assert [s["uid"] for s in saved["samples"]] == [12, 15, 13, 16, 14, 17]
    assert set(saved["maps"]) == {"stn_warp", "stn_sampling", "saliency"}
    assert saved["representations"] == {"raw_pixels": 32 * 32, "fc_feature": 50}
    assert saved["tsne"]["samples"] == 18


def test_explain_fold_is_byte_deterministic(fold_files, tmp_path, one_thread):
    run_explain(fold_files, tmp_path / "a")
    run_explain(fold_files, tmp_path / "b")
    for name in ("attention.png", "tsne.png", "explain.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


# -- published numbers -------------------------------------------------------------------------

def test_published_entries_name_registered_models_known_adapters_and_a_source():
    entries = published.load()
    assert len(entries) >= 30
    assert {e.paper for e in entries} == {
        "deepfer-attentional-cnn.txt", "mobilenet-center-loss-realtime-fer.txt",
        "e2-capsnet-au-attention.txt", "de-capsnet-privacy-preserving-fer.txt",
        "dam-cnn-serd-mpvs.txt"}
    assert set(published.KINDS) - {"unstated"} == set(splits._BUILDERS)
    for e in entries:
        assert e.model in REGISTRY, e
        assert e.dataset in ADAPTERS and e.tested_on in ADAPTERS, e
        assert e.class_set is None or e.class_set in CLASS_SETS, e
        assert any(word in e.where.lower() for word in ("table", "section", "(text)")), e
        assert 0 < e.accuracy <= 100, e
        assert (e.kind == "cross_dataset") == (e.test_dataset is not None), e


def test_a_malformed_entry_is_refused_by_name():
    with pytest.raises(ValueError, match="entry 1 lacks accuracy"):
        published.load("- {paper: p, method: m, model: deepfer, dataset: jaffe, class_set: '6',"
                       " kind: loso, protocol: x, where: Table 1}")
    with pytest.raises(ValueError, match="unknown kind 'random'"):
        published.load("- {paper: p, method: m, model: deepfer, dataset: jaffe, class_set: '6',"
                       " kind: random, protocol: x, accuracy: 90, where: Table 1}")


def context(**overrides) -> dict:
    base = {"dataset": "ck", "protocol": "p", "model": "mobilenet_cl", "adapter": "ckplus",
            "test_adapter": "ckplus", "kind": "subject_kfold", "folds": 10, "class_set": "6",
            "frames": "last3"}
    return {**base, **overrides}


def test_matching_is_by_model_and_datasets():
    entries = published.load()
    within = published.for_study(entries, context())
    assert len(within) == 8 and all(e.kind == "image_kfold" for e in within)
    crossed = published.for_study(entries, context(kind="cross_dataset", test_adapter="jaffe"))
    assert [e.accuracy for e in crossed] == [50.27]
    assert published.for_study(entries, context(adapter="synthetic",
                                                test_adapter="synthetic")) == []


def test_differences_name_split_classes_and_frames():
    six_large = next(e for e in published.load() if e.model == "mobilenet_cl"
                     and e.class_set == "6" and e.frames == "last3")
    assert published.differences(six_large, context()) == [
        "split: paper 5-fold over images (subject overlap) (images shuffled into five groups, "
        "four train and one validation; validation accuracy); ours subject-independent 10-fold"]
    same = context(kind="image_kfold", folds=5)
    assert published.differences(six_large, same) == []
    assert published.differences(six_large, {**same, "class_set": "7", "frames": "last"}) == [
        "classes: paper 6; ours 7", "frames: paper last3; ours last"]
    unstated = next(e for e in published.load() if e.model == "e2capsnet")
    assert published.differences(unstated, context(kind="predefined", folds=1)) == [
        "split: paper a split the paper does not describe (RAF-DB; the paper names no split "
        "(RAF-DB ships a train/test split)); ours the dataset's predefined splits",
        "classes: paper does not say; ours 6"]
