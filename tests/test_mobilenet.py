"""mobilenet_cl: MobileNetV1 + center loss (Miao et al. 2019), its losses, lr schedule and
pretrained-weight loading. Tiny widths keep every test on a CPU core in seconds."""

import numpy as np
import pytest
import torch
from torch import nn

from ferbench import train
from ferbench.data.download import sha256sum
from ferbench.models import get, mobilenet, parameter_count, pretrained
from ferbench.models.losses import center_loss, update_centres

SPEC = get("mobilenet_cl")

# Three samples of two features, three classes (class 2 absent from the batch).
FEATURES = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]])
TARGETS = torch.tensor([0, 1, 0])
CENTRES = torch.tensor([[1.0, 0.0], [0.0, 0.0], [5.0, 5.0]])


def build(num_classes=3, **overrides):
    """Built and started (init_from loaded) as jobs.train_fold does."""
    hp = SPEC.hyperparameters({"width": 0.25, **overrides})
    return SPEC.load_start(SPEC.build(num_classes, hp), hp)


def test_center_loss_matches_eq1_by_hand():
    # squared distances to own centre: 0 + 4, 9 + 16, 1 + 0 -> 1/2 * mean(4, 25, 1) = 5
    assert center_loss(FEATURES, TARGETS, CENTRES).item() == pytest.approx(5.0)


def test_update_centres_matches_eq2_by_hand():
    # class 0: n = 2, sum(c - x) = (0, -2) + (1, 0) = (1, -2), delta = (1, -2) / 3
    # class 1: n = 1, sum(c - x) = (-3, -4), delta = (-1.5, -2); class 2: absent, stays
    new = update_centres(FEATURES, TARGETS, CENTRES, alpha=0.3)
    expected = torch.tensor([[1 - 0.1, 0.2], [0.45, 0.6], [5.0, 5.0]])
    assert torch.allclose(new, expected)


def test_architecture_is_mobilenet_v1_with_a_2x2_map_at_48():
    model = SPEC.build(7, SPEC.hyperparameters())
    convs = [m for m in model.features.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 27 and convs[0].in_channels == 1
    depthwise, pointwise = convs[1::2], convs[2::2]
    assert all(c.groups == c.in_channels == c.out_channels for c in depthwise)
    assert [c.out_channels for c in pointwise] == [c for c, _ in mobilenet.BLOCKS]
    assert model.features(torch.zeros(1, 1, 48, 48)).shape == (1, 1024, 2, 2)
    assert 3.1e6 < parameter_count(model) < 3.3e6


def test_centres_are_a_buffer_updated_only_in_training():
    torch.manual_seed(0)
    model = build()
    assert "centres" in model.state_dict() and "centres" not in dict(model.named_parameters())
    x, y = torch.rand(4, 1, 48, 48) * 2 - 1, torch.tensor([0, 1, 1, 2])
    model.eval()
    loss, logits = model.objective(x, y)
    expected = (nn.functional.cross_entropy(logits, y)
                + 0.001 * center_loss(model.embed(x), y, model.centres))
    assert loss.item() == pytest.approx(expected.item())  # Eq. 3
    assert not model.centres.any()
    model.train()
    model.objective(x, y)[0].backward()
    assert model.centres.any()


def tiny_split(n=24, seed=0):
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 3, n)
    images = (rng.integers(0, 60, (n, 48, 48)) + targets[:, None, None] * 60).astype(np.uint8)
    return train.Split.from_arrays(images, targets, 48)


def run_fit(folder, epochs):
    torch.manual_seed(0)
    hp = SPEC.hyperparameters({"width": 0.125, "epochs": epochs, "patience": 99,
                               "batch_size": 8, "lr_step": 1, "lr_decay": 0.5})
    history, _, _, _ = train.fit(build(**hp), hp, tiny_split(), tiny_split(8, 1),
                                 folder / "ckpt.pt", seed=0, device=torch.device("cpu"),
                                 progress=False, fingerprint="f")
    return history, torch.load(folder / "ckpt.pt", weights_only=True)


def test_lr_steps_every_lr_step_epochs_and_is_constant_without_it():
    hp = {"lr": 0.01, "lr_decay": 0.94, "lr_step": 15}
    assert [train.scheduled_lr(hp, e) for e in (1, 15, 16, 31)] == pytest.approx(
        [0.01, 0.01, 0.0094, 0.01 * 0.94 ** 2])
    assert train.scheduled_lr({"lr": 0.01}, 100) == 0.01


def test_resumed_run_ends_with_the_lr_weights_and_centres_of_an_uninterrupted_one(tmp_path):
    train.make_deterministic(0, 1)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    full_history, full = run_fit(tmp_path / "a", epochs=3)
    run_fit(tmp_path / "b", epochs=1)  # "killed" after epoch 1: the checkpoint stays
    resumed_history, resumed = run_fit(tmp_path / "b", epochs=3)
    assert list(full_history["lr"]) == pytest.approx([0.01, 0.005, 0.0025])
    np.testing.assert_allclose(resumed_history.drop(columns="seconds").to_numpy(),
                               full_history.drop(columns="seconds").to_numpy())
    final_lr = [run["optimizer"]["param_groups"][0]["lr"] for run in (full, resumed)]
    assert final_lr == [0.0025, 0.0025]
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert full["model"]["centres"].any()


def test_init_from_a_ferbench_checkpoint_transfers_the_backbone_only(tmp_path, capsys):
    torch.manual_seed(0)
    stage1 = build(num_classes=7)
    stage1.centres.fill_(1.0)
    torch.save({"model": "mobilenet_cl", "labels": list("abcdefg"),
                "state_dict": stage1.state_dict()}, tmp_path / "model.pt")
    stage2 = build(num_classes=7, init_from=str(tmp_path / "model.pt"))
    for key, value in stage1.features.state_dict().items():
        assert torch.equal(value, stage2.features.state_dict()[key]), key
    assert not torch.equal(stage1.classifier.weight, stage2.classifier.weight)
    assert not stage2.centres.any()
    assert "0 tensor(s) kept their initialisation" in capsys.readouterr().out


def imagenet_style_checkpoint(model: nn.Module) -> dict:
    """A MobileNetV1 file as others write it: own names, RGB first conv, 1000-way classifier."""
    state = {}
    for i, module in enumerate(m for m in model.features.modules()
                               if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))):
        for key, value in module.state_dict().items():
            state[f"module.layer{i}.{key}"] = value.clone()
    state["module.layer0.weight"] = torch.randn(state["module.layer0.weight"].shape[0], 3, 3, 3)
    state["module.fc.weight"] = torch.randn(1000, model.classifier.in_features)
    return {"state_dict": state}


def test_init_from_imagenet_url_checks_sha256_and_keeps_mismatched_layers(tmp_path, monkeypatch,
                                                                         capsys):
    monkeypatch.setattr(pretrained, "WEIGHTS_CACHE", tmp_path / "cache")
    torch.manual_seed(0)
    source = build()
    weights = tmp_path / "mobilenet_v1_imagenet.pth"
    torch.save(imagenet_style_checkpoint(source), weights)
    with pytest.raises(ValueError, match="sha256"):
        build(init_from=weights.as_uri(), init_sha256="0" * 64)
    model = build(init_from=weights.as_uri(), init_sha256=sha256sum(weights))
    kept = model.features[0][0].weight
    assert kept.shape == (8, 1, 3, 3) and not torch.equal(kept, source.features[0][0].weight)
    for key, value in list(source.features.state_dict().items())[1:]:
        assert torch.equal(value, model.features.state_dict()[key]), key
    assert "features.0.0.weight: (8, 3, 3, 3) in checkpoint, (8, 1, 3, 3) here" in (
        capsys.readouterr().out)


def test_init_from_another_architecture_is_refused(tmp_path):
    torch.save({"state_dict": {"conv.weight": torch.zeros(8, 1, 3, 3)}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a MobileNetV1"):
        build(init_from=str(tmp_path / "x.pt"))
