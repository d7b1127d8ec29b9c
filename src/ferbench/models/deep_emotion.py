"""Deep-Emotion (Minaee & Abdolrashidi 2019), the baseline DeepFER compares with.

Four 3x3 conv layers (conv-conv-pool-ReLU twice), dropout, two FC layers, and a spatial
transformer that warps the 48x48 input first. Loss: cross-entropy + lambda * L2 of the FC
weights, the same regulariser DeepFER keeps (DeepFER Eq. 1).
"""

from __future__ import annotations

import torch
from torch import nn

from ferbench.models.base import FERModel
from ferbench.models.losses import fc_l2
from ferbench.models.stn import SpatialTransformer

DEFAULTS = {
    "optimizer": "adam",
    "lr": 1e-3,
    "weight_decay": 0.0,
    "batch_size": 64,
    "epochs": 40,
    "patience": 10,
    "dropout": 0.5,
    "l2_lambda": 1e-3,
    "input_size": 48,
}


class DeepEmotion(FERModel):
    def __init__(self, num_classes: int, dropout: float = 0.5, l2_lambda: float = 1e-3,
                 input_size: int = 48):
        super().__init__()
        self.l2_lambda = l2_lambda
        self.stn = SpatialTransformer(1, input_size)
        side = ((input_size - 4) // 2 - 4) // 2  # two (conv3, conv3, pool2) blocks, no padding
        self.features = nn.Sequential(
            nn.Conv2d(1, 10, 3), nn.Conv2d(10, 10, 3), nn.MaxPool2d(2), nn.ReLU(True),
            nn.Conv2d(10, 10, 3), nn.Conv2d(10, 10, 3), nn.MaxPool2d(2), nn.ReLU(True),
            nn.Dropout(dropout),
        )
        self.fc1 = nn.Linear(10 * side * side, 50)
        self.fc2 = nn.Linear(50, num_classes)

    def fc_feature(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the first FC layer, the one before the class scores."""
        return nn.functional.relu(self.fc1(self.features(self.stn(x)).flatten(1)))

    def forward(self, x):
        return self.fc2(self.fc_feature(x))

    def loss(self, logits, targets):
        """L = cross-entropy + lambda * ||w(fc)||_2^2 (DeepFER Eq. 1)."""
        return self.classification_loss(logits, targets) + self.l2_lambda * fc_l2(
            (self.fc1, self.fc2))

    face_like_maps = ("stn_warp",)

    def attention_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The STN's warp and sampling density beside the gradient saliency."""
        return {**self.stn.attention_maps(x), **super().attention_maps(x)}

    def representations(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"fc_feature": self.fc_feature(x)}
