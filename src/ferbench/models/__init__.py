"""The model registry: one entry per model, each with its paper's defaults.

Every model is a `FERModel` (models/base.py): it takes a (B, 1, input_size, input_size) float
tensor in [-1, 1], returns class scores, and its `objective(x, targets)` implements its
paper's loss. Later models join by adding a module and one line here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ferbench.models import deep_emotion, deepfer


@dataclass(frozen=True)
class ModelSpec:
    name: str
    cls: type[nn.Module]
    defaults: dict = field(default_factory=dict)
    paper: str = ""

    @property
    def input_size(self) -> int:
        return self.cls.input_size

    def hyperparameters(self, overrides: dict | None = None) -> dict:
        """Paper defaults updated by the config's `models.<name>` block."""
        return {**self.defaults, **(overrides or {})}

    def build(self, num_classes: int, hyperparameters: dict) -> nn.Module:
        return self.cls(num_classes, **hyperparameters)


REGISTRY: dict[str, ModelSpec] = {
    "deepfer": ModelSpec("deepfer", deepfer.DeepFER, deepfer.DEFAULTS,
                         "deepfer-attentional-cnn.txt"),
    "deep_emotion": ModelSpec("deep_emotion", deep_emotion.DeepEmotion, deep_emotion.DEFAULTS,
                              "Minaee & Abdolrashidi 2019 (DeepFER's baseline)"),
}


def get(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r} (registered: {', '.join(REGISTRY)})") from None


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
