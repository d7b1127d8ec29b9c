"""The model registry: one entry per model, each with its paper's defaults.

Every model is a `FERModel` (models/base.py): it takes a (B, 1, input_size, input_size) float
tensor in [-1, 1], returns class scores, and its `objective(x, targets)` implements its
paper's loss. Later models join by adding a module and one line here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ferbench import recipes
from ferbench.models import capsnet, damcnn, deep_emotion, deepfer, mobilenet


@dataclass(frozen=True)
class ModelSpec:
    """A registered model.

    `fixed` are constructor arguments the config cannot override (which DAM-CNN step a
    registry entry is). `starts_from` names the model whose `model.pt` of the same fold this
    one starts from, a DAG edge the workflow fills into `init_from` (DAM-CNN's step 2 on
    step 1). A model with an `init_from` hyperparameter and no `starts_from` can instead be
    pretrained on another dataset (a study's `pretrain:`, MobileNet-CL's two stages).
    `trains_on_dcgan`: the fold's DCGAN faces join its training set (DE-Capsnet Section 3.1.2).
    `defaults` gain the training-recipe keys every model accepts (recipes.TRAINING_DEFAULTS).
    """

    name: str
    cls: type[nn.Module]
    defaults: dict = field(default_factory=dict)
    paper: str = ""
    fixed: dict = field(default_factory=dict)
    starts_from: str = ""
    trains_on_dcgan: bool = False

    def __post_init__(self):
        object.__setattr__(self, "defaults", {**recipes.TRAINING_DEFAULTS, **self.defaults})

    @property
    def can_pretrain(self) -> bool:
        return "init_from" in self.defaults and not self.starts_from

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
        return recipes.with_preset(self.defaults, overrides or {})

    def build(self, num_classes: int, hyperparameters: dict) -> nn.Module:
        return self.cls(num_classes, **hyperparameters, **self.fixed)


REGISTRY: dict[str, ModelSpec] = {
    "deepfer": ModelSpec("deepfer", deepfer.DeepFER, deepfer.DEFAULTS,
                         "deepfer-attentional-cnn.txt"),
    "deep_emotion": ModelSpec("deep_emotion", deep_emotion.DeepEmotion, deep_emotion.DEFAULTS,
                              "Minaee & Abdolrashidi 2019 (DeepFER's baseline)"),
    "vgg_serd": ModelSpec("vgg_serd", damcnn.DAMCNN, damcnn.VGG_SERD_DEFAULTS,
                          "dam-cnn-serd-mpvs.txt (step 1)", fixed={"step": 1}),
    "damcnn": ModelSpec("damcnn", damcnn.DAMCNN, damcnn.DEFAULTS,
                        "dam-cnn-serd-mpvs.txt (step 2)", fixed={"step": 2},
                        starts_from="vgg_serd"),
    "mobilenet_cl": ModelSpec("mobilenet_cl", mobilenet.MobileNetCL, mobilenet.DEFAULTS,
                              "mobilenet-center-loss-realtime-fer.txt"),
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
}


def get(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r} (registered: {', '.join(REGISTRY)})") from None


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
