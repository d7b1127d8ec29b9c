"""DAM-CNN: SERD and MPAE losses, shapes at tiny width, the two training steps."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ferbench import train
from ferbench.data.download import sha256sum
from ferbench.jobs import save_model
from ferbench.models import get
from ferbench.models.vgg import VGGTrunk
from ferbench.models.losses import mpae_reconstruction, serd_regulariser

SIZE = 64
TINY = {"width": 1 / 16, "input_size": SIZE, "decoders": 3}

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_split(n=24, seed=0):
    """Three classes told apart by brightness: 0-59, 60-119, 120-179."""
    rng = np.random.default_rng(seed)
    targets = np.arange(n) % 3
    images = (rng.integers(0, 60, (n, SIZE, SIZE)) + targets[:, None, None] * 60).astype(np.uint8)
    return train.Split.from_arrays(images, targets, SIZE)


def build(name="vgg_serd", **overrides):
    """Step 1 (`vgg_serd`) by default; `build("damcnn", init_from=...)` is step 2. Built and
    started as jobs.train_fold does."""
    spec = get(name)
    tiny = {k: v for k, v in TINY.items() if k in spec.defaults}
    hp = spec.hyperparameters({**tiny, **overrides})
    return spec.load_start(spec.build(3, hp), hp)


def write_step1(path, model, **overrides):
    """A step-1 `model.pt` as jobs.train_fold writes it."""
    hp = get("vgg_serd").hyperparameters({"width": TINY["width"], "input_size": SIZE,
                                          **overrides})
    return str(save_model(path, "vgg_serd", ["a", "b", "c"], hp, model.state_dict(), {}))




@pytest.fixture
def step1_checkpoint(tmp_path):
    torch.manual_seed(0)
    step1 = build()
    return write_step1(tmp_path / "model.pt", step1), step1


def test_serd_regulariser_matches_eq3_by_hand():
    mask = torch.tensor([[[[0.5, -0.5], [1.0, 0.0]]],
                         [[[0.0, 0.0], [0.0, 0.0]]]])
    # sample 1: ||M||_1 = 2 -> 4; 1 - M^2 = .75, .75, 0, 1 -> squares sum 2.125
    # sample 2: ||M||_1 = 0; 1 - M^2 = 1 everywhere -> 4
    expected = ((0.1 * 4 + 0.01 * 2.125) + (0.01 * 4)) / 2
    assert serd_regulariser(mask, 0.1, 0.01).item() == pytest.approx(expected)


def test_mpae_reconstruction_matches_eq8_eq9_by_hand():
    reconstructions = torch.tensor([[[1.0, 2.0], [0.0, 0.0]],      # decoder 1, samples 1-2
                                    [[0.0, 0.0], [3.0, 0.0]]])     # decoder 2
    targets = torch.zeros(2, 2, 2)
    # J_1 = (1 + 4 + 0) / 2 = 2.5, J_2 = (0 + 9) / 2 = 4.5
    assert mpae_reconstruction(reconstructions, targets).item() == pytest.approx(7.0)


def test_shapes_and_mask_range(step1_checkpoint):
    path, step1 = step1_checkpoint
    x = torch.rand(4, 1, SIZE, SIZE) * 2 - 1
    salient, mask = step1.salient_features(x)
    side = SIZE // 32
    assert salient.shape == (4, step1.trunk.out_channels * side * side)
    assert mask.shape == (4, 1, side, side) and mask.abs().max() <= 1
    heatmap = step1.attention(x)
    assert heatmap.shape == (4, 1, SIZE, SIZE) and heatmap.abs().max() <= 1
    assert step1(x).shape == (4, 3)
    step2 = build("damcnn", init_from=path)
    assert step2(x).shape == (4, 3)
    assert step2.mpvs.decode(step2.mpvs.encode(salient)).shape == (3, *salient.shape)


def test_step2_loads_step1_and_needs_it(step1_checkpoint):
    path, step1 = step1_checkpoint
    step2 = build("damcnn", init_from=path)
    for name in ("trunk", "serd"):
        for key, value in getattr(step1, name).state_dict().items():
            assert torch.equal(getattr(step2, name).state_dict()[key], value), key
    with pytest.raises(ValueError, match="init_from"):  # training without step 1 is refused
        build("damcnn").prepare(*map(tiny_split().__getattribute__, ("images", "targets")))


@pytest.mark.parametrize("batch_norm", [False, True])
def test_step2_freezes_trunk_and_serd(tmp_path, batch_norm):
    torch.manual_seed(0)
    path = write_step1(tmp_path / "model.pt", build(batch_norm=batch_norm),
                       batch_norm=batch_norm)
    model = build("damcnn", init_from=path, batch_norm=batch_norm).train()
    split = tiny_split()
    model.prepare(split.images, split.targets)
    frozen = [*model.trunk.parameters(), *model.serd.parameters()]
    assert not any(p.requires_grad for p in frozen)
    # A batch-norm trunk's running statistics stay step 1's while MPVS-Net trains.
    assert not model.trunk.training and model.mpvs.training
    statistics = {name: b.clone() for name, b in model.trunk.named_buffers()}
    assert bool(statistics) == batch_norm
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = train.make_optimizer(model, get("damcnn").hyperparameters({"lr": 0.1}))
    loss, _ = model.objective(train.as_input(split.images[:8], torch.device("cpu")),
                              split.targets[:8])
    loss.backward()
    optimizer.step()
    moved = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert not {name for name in moved if not name.startswith("mpvs.")}
    assert {"mpvs.classifier.weight", "mpvs.decoders.0.bias", "mpvs.encoder.bias"} <= moved
    assert all(torch.equal(b, statistics[name]) for name, b in model.trunk.named_buffers())


def test_step2_gradients_follow_eq10_and_eq11(step1_checkpoint):
    """Loss = J_all + lambda L_ce; the MPAE gets its gradient, the FC layers L_ce's alone."""
    path, _ = step1_checkpoint
    model = build("damcnn", init_from=path).eval()  # no dropout: both passes see the same net
    split = tiny_split()
    model.prepare(split.images, split.targets)
    x, y = train.as_input(split.images[:6], torch.device("cpu")), split.targets[:6]
    torch.manual_seed(5)
    loss, _ = model.objective(x, y)
    loss.backward()
    got = {name: p.grad.clone() for name, p in model.mpvs.named_parameters()}
    model.zero_grad()
    torch.manual_seed(5)
    code = model.mpvs.encode(model.salient_features(x)[0])
    reconstruction = mpae_reconstruction(model.mpvs.decode(code), model.reconstruction_targets(y))
    eq11 = reconstruction + 20 * F.cross_entropy(model.mpvs.classify(code), y)
    assert loss.item() == pytest.approx(eq11.item(), rel=1e-6)
    eq11.backward()
    for name, p in model.mpvs.named_parameters():
        scale = 20 if name.startswith(("fc.", "classifier.")) else 1
        torch.testing.assert_close(got[name] * scale, p.grad, msg=name)


def test_decoders_reconstruct_same_class_samples(step1_checkpoint):
    path, _ = step1_checkpoint
    model = build("damcnn", init_from=path)
    split = tiny_split()
    model.prepare(split.images, split.targets)
    labels = torch.tensor([0, 1, 2, 2, 1])
    torch.manual_seed(3)
    drawn = model.same_class_samples(labels)
    assert drawn.shape == (3, 5)
    assert torch.equal(split.targets[drawn], labels.expand(3, -1))
    torch.manual_seed(3)
    assert torch.equal(model.same_class_samples(labels), drawn)  # seeded: resumable


def test_step1_learns_a_separable_toy_task():
    torch.manual_seed(0)
    model = build()
    optimizer = train.make_optimizer(model, get("vgg_serd").hyperparameters(
        {"optimizer": "adam", "lr": 1e-3}))
    split = tiny_split()
    x = train.as_input(split.images, torch.device("cpu"))
    losses = []
    for _ in range(25):
        loss, _ = model.objective(x, split.targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0]
    assert losses[0] > math.log(3) * 0.9  # it started at chance


def test_step2_fit_resumes_exactly(step1_checkpoint, tmp_path):
    """fit calls prepare; 1 epoch + resume to 2 equals 2 epochs in one go."""
    path, _ = step1_checkpoint
    spec = get("damcnn")
    hp = spec.hyperparameters({**TINY, "init_from": path, "epochs": 2,
                               "patience": 9, "batch_size": 8, "lr": 1e-3})

    def run(folder, epochs):
        torch.manual_seed(0)
        model = spec.load_start(spec.build(3, hp), hp)
        return train.fit(model, {**hp, "epochs": epochs}, tiny_split(), tiny_split(9, 1),
                         tmp_path / folder / "ckpt.pt", seed=0, device=torch.device("cpu"),
                         progress=False, fingerprint="f")

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    full_history, full_best, _, _ = run("a", 2)
    run("b", 1)
    resumed_history, resumed_best, _, _ = run("b", 2)
    np.testing.assert_allclose(resumed_history.drop(columns="seconds").to_numpy(),
                               full_history.drop(columns="seconds").to_numpy())
    for key in full_best:
        assert torch.equal(full_best[key], resumed_best[key]), key


def test_gender_bound_decoders_draw_their_own_gender(step1_checkpoint):
    """DAM-CNN-g (Section 4.3.2): decoder j rebuilds a same-class sample of gender j mod 2;
    a class without that gender falls back to the whole class."""
    path, _ = step1_checkpoint
    model = build("damcnn", init_from=path, decoders=4, gender_bound=True)
    split = tiny_split(n=24)
    groups = torch.arange(24) // 3 % 2  # both genders in every class ...
    groups[split.targets == 2] = 0      # ... but class 2 has only gender 0
    groups[0] = -1                      # and one sample has no gender
    model.prepare(split.images, split.targets, groups)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    drawn = model.same_class_samples(labels)
    assert torch.equal(split.targets[drawn], labels.expand(4, -1))
    gender = groups[drawn]
    bound = labels != 2
    assert (gender[0::2][:, bound] == 0).all() and (gender[1::2][:, bound] == 1).all()
    assert (gender[:, ~bound] == 0).all()
    with pytest.raises(ValueError, match="gender"):
        build("damcnn", init_from=path, gender_bound=True).prepare(split.images, split.targets)


def test_a_fresh_serd_mask_lets_every_region_through():
    """W_a = 0, B_a = 1: M = tanh(1) everywhere, so h_s carries the trunk's features and
    gradients reach the trunk from the first step (a negative mask would stop them all)."""
    torch.manual_seed(0)
    model = build()
    salient, mask = model.salient_features(tiny_split(n=4).images.float() / 127.5 - 1)
    assert torch.allclose(mask, torch.full_like(mask, math.tanh(1.0)))
    assert salient.abs().sum() > 0


def test_step1_head_starts_as_vggs_fc_layers():
    """fc6-fc8 start as torchvision's VGG (and Caffe's VGG-Face fc8): normal with std 0.01,
    zero bias, not PyTorch's default draw, which is several times larger here."""
    torch.manual_seed(0)
    model = build(width=0.125, input_size=64)
    linears = [layer for layer in model.head if isinstance(layer, torch.nn.Linear)]
    assert len(linears) == 3
    for layer in linears:
        assert abs(layer.weight.std().item() - 0.01) < 0.001
        assert not layer.bias.any()


def sequence_split(n=24):
    """tiny_split's faces in sequences of 2 frames (faces 2k, 2k+1), each class in 4."""
    split = tiny_split(n)
    split.targets = torch.arange(n) // 2 % 3
    split.sequences = torch.arange(n) // 2
    return split


def test_decoder_targets_are_fixed_once_outside_the_sample_sequence(step1_checkpoint):
    """Algorithm 1's text: the pairs (s_i, s_i^j) are stored before step 2; each target is of the
    sample's class, never the sample itself nor a face of its sequence (its other frames,
    its augmented copies)."""
    path, _ = step1_checkpoint
    model = build("damcnn", init_from=path).eval()  # no dropout: the loss is deterministic
    split = sequence_split()
    torch.manual_seed(7)
    model.prepare(split.images, split.targets, sequences=split.sequences)
    everyone = torch.arange(len(split))
    targets = model.fixed_targets(everyone)
    assert targets.shape == (3, len(split))
    assert torch.equal(split.targets[targets], split.targets.expand(3, -1))
    assert (split.sequences[targets] != split.sequences).all()
    samples = torch.tensor([5, 0, 17])
    x = train.as_input(split.images[samples], torch.device("cpu"))
    losses = []
    for seed in (1, 2):  # another batch, another epoch: the same targets, the same loss
        torch.manual_seed(seed)
        losses.append(model.training_objective(x, split.targets[samples], samples)[0].item())
    assert losses[0] == losses[1]
    assert torch.equal(model.fixed_targets(samples), targets[:, samples])
    torch.manual_seed(7)  # the run's seed fixes the draw: a resumed run pairs alike
    again = build("damcnn", init_from=path)
    again.prepare(split.images, split.targets, sequences=split.sequences)
    assert torch.equal(again.fixed_targets(everyone), targets)


def test_a_class_of_one_sequence_falls_back_inside_it_but_not_to_the_sample(step1_checkpoint,
                                                                           capsys):
    path, _ = step1_checkpoint
    model = build("damcnn", init_from=path)
    split = sequence_split()
    split.sequences[split.targets == 2] = 99  # class 2's faces: all of one sequence
    model.prepare(split.images, split.targets, sequences=split.sequences)
    targets = model.fixed_targets(torch.arange(len(split)))
    lone = split.targets == 2
    assert (targets[:, lone] != torch.arange(len(split))[lone]).all()
    assert (split.sequences[targets[:, ~lone]] != split.sequences[~lone]).all()
    assert f"{int(lone.sum())} of {len(split)} training faces" in capsys.readouterr().out


def test_gender_bound_fixed_targets_keep_their_gender_outside_the_sequence(step1_checkpoint):
    path, _ = step1_checkpoint
    model = build("damcnn", init_from=path, decoders=4, gender_bound=True)
    split = sequence_split()
    groups = torch.arange(len(split)) // 6 % 2  # sequences of both genders in every class
    model.prepare(split.images, split.targets, groups, split.sequences)
    targets = model.fixed_targets(torch.arange(len(split)))
    assert torch.equal(split.targets[targets], split.targets.expand(4, -1))
    assert (split.sequences[targets] != split.sequences).all()
    assert (groups[targets[0::2]] == 0).all() and (groups[targets[1::2]] == 1).all()


def vgg_face_file(tmp_path, hidden, features):
    """A VGG-Face-like state dict at the tiny width: 13 convs, then fc6, fc7, fc8 (2622 ids)."""
    trunk = VGGTrunk("vgg16", in_channels=3, width=TINY["width"])
    state = {f"features.{k}": v for k, v in trunk.state_dict().items()}
    for name, shape in (("fc6", (hidden, features)), ("fc7", (hidden, hidden)),
                        ("fc8", (2622, hidden))):
        state[f"{name}.weight"], state[f"{name}.bias"] = torch.randn(shape), torch.randn(shape[0])
    path = tmp_path / "vgg_face.pth"
    torch.save(state, path)
    return state, path


def test_step1_keeps_vgg_face_fc6_fc7_and_renews_only_the_last_layer(tmp_path):
    """Section 3.1: "we reshape and reinitialize the last fully-connected layer"."""
    torch.manual_seed(0)
    fresh = build()
    fc6, fc7, fc8 = fresh.head[0], fresh.head[3], fresh.head[6]
    state, path = vgg_face_file(tmp_path, fc7.in_features, fc6.in_features)
    torch.manual_seed(0)
    model = build(pretrained=str(path), pretrained_sha256=sha256sum(path))
    assert torch.equal(model.head[0].weight, state["fc6.weight"])
    assert torch.equal(model.head[3].bias, state["fc7.bias"])
    assert torch.equal(model.head[6].weight, fc8.weight) and fc8.out_features == 3
    assert torch.equal(model.trunk.stages[4][0].weight, state["features.stages.4.0.weight"])


def test_constructors_never_load_weights(tmp_path):
    """A trained model is rebuilt from its own hyperparameters and state dict: building reads
    neither VGG-Face nor the step-1 model (they need not exist any more)."""
    gone = str(tmp_path / "deleted.pt")
    for name, key in (("vgg_serd", "pretrained"), ("damcnn", "init_from")):
        spec = get(name)
        hp = spec.hyperparameters({**{k: v for k, v in TINY.items() if k in spec.defaults},
                                   key: gone})
        spec.build(3, hp)  # no error: nothing is read
        with pytest.raises((FileNotFoundError, OSError)):
            spec.load_start(spec.build(3, hp), hp)
