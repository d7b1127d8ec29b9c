import inspect
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from ferbench import train
from ferbench.models import REGISTRY, ModelSpec, get, parameter_count
from ferbench.models.base import FERModel
from ferbench.models.losses import fc_l2


def test_fc_l2_matches_hand_computation():
    layer = nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0]]))
        layer.bias.fill_(5.0)  # biases are not regularised
    assert fc_l2([layer, layer]).item() == pytest.approx(2 * (1 + 4))


def test_deep_emotion_loss_matches_eq1():
    spec = get("deep_emotion")
    model = spec.build(2, spec.hyperparameters({"l2_lambda": 0.1}))
    with torch.no_grad():
        for layer in (model.fc1, model.fc2):
            layer.weight.zero_()
        model.fc2.weight[0, 0] = 3.0
    logits = torch.tensor([[0.0, math.log(3.0)]])
    # CE = -log(3/4); lambda * ||w(fc)||^2 = 0.1 * 9
    expected = -math.log(3 / 4) + 0.9
    assert model.loss(logits, torch.tensor([1])).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_models_map_a_batch_to_logits(name):
    spec = get(name)
    model = spec.build(7, spec.hyperparameters())
    channels = 1 + len(getattr(model, "extra_channels", ()))
    out = model.eval()(torch.zeros(3, channels, spec.input_size(), spec.input_size()))
    assert out.shape == (3, 7)
    assert parameter_count(model) > 10_000


@pytest.mark.parametrize("name", list(REGISTRY))
def test_constructors_declare_every_parameter_they_take(name):
    """No `**_`: a misspelt or training-only key can never be swallowed by a constructor."""
    kinds = {p.kind for p in inspect.signature(get(name).cls).parameters.values()}
    assert inspect.Parameter.VAR_KEYWORD not in kinds


class Recorder(FERModel):
    """A linear model that records what it is built with and which rows each batch holds."""

    def __init__(self, num_classes: int, width: float = 1.0):
        super().__init__()
        self.built_with = {"width": width}
        self.linear = nn.Linear(48 * 48, num_classes)
        self.batches = []
        self.started_from = None

    def forward(self, x):
        return self.linear(x.flatten(1))

    def loss(self, logits, targets):
        return nn.functional.cross_entropy(logits, targets)

    def training_objective(self, x, targets, samples):
        self.batches.append((x.clone(), samples.clone()))
        return super().training_objective(x, targets, samples)

    def load_start_weights(self, path, sha256=""):
        self.started_from = (path, sha256)


def test_build_passes_only_declared_parameters_and_load_start_loads_after():
    spec = ModelSpec("recorder", Recorder, {"width": 0.5, "epochs": 3, "lr": 0.1,
                                            "init_from": "", "label_smoothing": 0.1},
                     start_weights=("init_from", ""))
    hp = spec.hyperparameters({"init_from": "stage1/model.pt"})
    model = spec.build(3, hp)
    assert model.built_with == {"width": 0.5} and model.started_from is None
    assert spec.load_start(model, hp).started_from == ("stage1/model.pt", "")
    assert spec.load_start(spec.build(3, spec.hyperparameters()), {}).started_from is None


def test_the_training_loop_tells_the_model_which_rows_each_batch_holds(tmp_path):
    torch.manual_seed(0)
    model = Recorder(3)
    hp = get("deep_emotion").hyperparameters({"epochs": 1, "batch_size": 16})
    split = tiny_split()
    train.fit(model, hp, split, tiny_split(24, 1), tmp_path / "ckpt.pt", seed=0,
              device=torch.device("cpu"), progress=False)
    assert sorted(torch.cat([rows for _, rows in model.batches]).tolist()) == list(range(48))
    for x, rows in model.batches:
        assert torch.equal(x, train.as_input(split.images[rows], torch.device("cpu")))


def test_deepfer_has_seven_convs_four_fcs_and_identity_stn():
    model = get("deepfer").build(7, get("deepfer").hyperparameters())
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 7 and len(model.fc) == 4
    x = torch.rand(2, 1, 48, 48)
    assert torch.allclose(model.warp(x), x, atol=1e-5)  # theta starts at identity


def test_deepfer_signal_survives_its_depth_at_initialisation():
    """Default init shrinks the logits' spread across inputs to ~1e-5 and training stalls."""
    torch.manual_seed(0)
    model = get("deepfer").build(7, get("deepfer").hyperparameters({"width": 0.5})).eval()
    with torch.no_grad():
        logits = model(torch.rand(16, 1, 48, 48) * 2 - 1)
    assert logits.std(0).mean() > 0.1


def tiny_split(n=48, seed=0):
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 3, n)
    images = (rng.integers(0, 60, (n, 48, 48)) + targets[:, None, None] * 60).astype(np.uint8)
    return train.Split.from_arrays(images, targets, 48)


def run_fit(tmp_path, epochs, name="ckpt.pt", autocast=None):
    torch.manual_seed(0)
    spec = get("deep_emotion")
    hp = spec.hyperparameters({"epochs": epochs, "patience": 99, "batch_size": 16})
    model = spec.build(3, hp)
    return train.fit(model, hp, tiny_split(), tiny_split(24, 1), tmp_path / name, seed=0,
                     device=torch.device("cpu"), progress=False, fingerprint="f",
                     autocast=autocast)


def test_training_learns_a_separable_toy_task(tmp_path):
    history, _, _, _ = run_fit(tmp_path, epochs=8)
    assert history["val_acc"].max() > 0.8


def test_bfloat16_autocast_trains_and_keeps_float32_weights(tmp_path):
    """The mixed-precision path (bf16 autocast, as on CUDA) run on the CPU: it learns the
    toy task, its weights stay float32, and its losses differ from float32's (it really
    ran in bf16)."""
    history, best, _, _ = run_fit(tmp_path, epochs=8, autocast=torch.bfloat16)
    assert history["val_acc"].max() > 0.8
    assert all(v.dtype == torch.float32 for v in best.values() if v.is_floating_point())
    full, _, _, _ = run_fit(tmp_path, epochs=1, name="fp32.pt")
    assert history["train_loss"][0] != full["train_loss"][0]


@pytest.mark.parametrize("setting, device, model, expected", [
    ("auto", "cpu", "deep_emotion", None),          # CPU: bit-reproducible float32
    ("bf16", "cpu", "deep_emotion", torch.bfloat16),
    ("off", "cpu", "deep_emotion", None),
    ("auto", "cpu", "e2capsnet", None),
    ("bf16", "cpu", "e2capsnet", torch.bfloat16),  # forced, even for capsules
])
def test_mixed_precision_choice(setting, device, model, expected):
    spec = get(model)
    network = spec.build(3, spec.hyperparameters({"input_size": 64, "width": 1 / 16}
                                                 if model == "e2capsnet" else {}))
    assert train.autocast_dtype(setting, torch.device(device), network) == expected


def test_capsule_models_keep_routing_in_float32_and_the_rest_may_not():
    tiny = {"input_size": 64, "width": 1 / 16}
    assert get("e2capsnet").build(3, get("e2capsnet").hyperparameters(tiny)).full_precision
    assert not get("vgg16").build(3, get("vgg16").hyperparameters(tiny)).full_precision
    assert not getattr(get("mobilenet_cl").build(3, get("mobilenet_cl").hyperparameters()),
                       "full_precision", False)


def test_killed_training_resumes_to_identical_weights(tmp_path):
    """Stop after 2 of 4 epochs, resume: same history and best weights as one run of 4."""
    train.make_deterministic(0, 1)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    full_hist, full_best, _, _ = run_fit(tmp_path / "a", epochs=4)
    run_fit(tmp_path / "b", epochs=2)  # "killed" after epoch 2: the checkpoint stays
    resumed_hist, resumed_best, _, _ = run_fit(tmp_path / "b", epochs=4)
    np.testing.assert_allclose(resumed_hist.drop(columns="seconds").to_numpy(),
                               full_hist.drop(columns="seconds").to_numpy())
    for key in full_best:
        assert torch.equal(full_best[key], resumed_best[key]), key


def test_determinism_is_set_without_importing_the_compiler():
    """A fresh process, as a training job is: the flag is on (an error, not a warning, on the
    CPU), and torch._inductor, 1-2 s of import that torch.use_deterministic_algorithms pays
    for a compiler flag, stays unloaded."""
    probe = ("import sys, torch; from ferbench import train; train.make_deterministic(0, 1); "
             "print(torch.are_deterministic_algorithms_enabled(), "
             "torch.is_deterministic_algorithms_warn_only_enabled(), "
             "'torch._inductor' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["True", "False", "False"]


def test_checkpoint_for_other_settings_is_not_resumed(tmp_path):
    run_fit(tmp_path, epochs=2)
    assert train.load_checkpoint(tmp_path / "ckpt.pt", "f", torch.device("cpu")) is not None
    assert train.load_checkpoint(tmp_path / "ckpt.pt", "other", torch.device("cpu")) is None


def test_stn_warp_stays_near_the_identity_however_far_the_regressor_goes():
    """An unbounded theta once shifted the warp off the image and froze DeepFER at chance."""
    from ferbench.models.stn import MAX_DEVIATION, SpatialTransformer

    stn = SpatialTransformer(1, 48)
    with torch.no_grad():
        stn.regressor[2].bias.fill_(1e4)
    theta = stn.theta(torch.rand(4, 1, 48, 48))
    deviation = theta - torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    assert deviation.abs().max() <= MAX_DEVIATION + 1e-6


def test_concurrent_jobs_claim_different_gpus(tmp_path):
    """Two job processes on a 3-GPU machine get two GPUs; a fourth job would share one."""
    import subprocess
    import sys

    script = ("import sys, time; from pathlib import Path; from ferbench.train import claim_gpu; "
              "print(claim_gpu(3, Path(sys.argv[1])), flush=True); time.sleep(float(sys.argv[2]))")
    holders = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), "20"],
                                stdout=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        claimed = sorted(int(p.stdout.readline()) for p in holders)
        assert claimed == [0, 1, 2]
        late = subprocess.run([sys.executable, "-c", script, str(tmp_path), "0"],
                              capture_output=True, text=True, timeout=60)
        assert "sharing GPU" in late.stdout
    finally:
        for p in holders:
            p.kill()
            p.wait()
    after = subprocess.run([sys.executable, "-c", script, str(tmp_path), "0"],
                           capture_output=True, text=True, timeout=60)
    assert after.stdout.strip() == "0"  # a finished job's GPU is free again
