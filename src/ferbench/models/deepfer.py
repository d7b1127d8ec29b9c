"""DeepFER (Mohsin, Rafi & Navil), read beside `papers/deepfer-attentional-cnn.txt`.

Feature extraction part (Fig. 1): seven 3x3 conv layers; every two of the first six are
followed by max-pooling and ReLU, the seventh by ReLU only; then dropout and four fully
connected layers. Attention part: a spatial transformer regresses an affine theta
(initialised to identity) and warps the input on the sampling grid tau(theta) before the
feature path. Loss (Eq. 1): L_overall = L_classifier + lambda * ||w(fc)||_2^2 over the
weights of the four FC layers; Adam; trained from scratch.

The paper gives no channel widths; ours double per block (32-64-128, then 256) and `width`
scales them all, so the demo can run a narrower network on two CPU cores. Nor does it give an
initialisation: with PyTorch's default one this eleven-layer plain ReLU stack (no batch norm)
stays at chance on the synthetic demo, so conv and FC weights use He initialisation, the
standard choice for ReLU networks trained from scratch.
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
    "l2_lambda": 1e-4,
    "width": 1.0,
    "input_size": 48,
}


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, padding=1)


class DeepFER(FERModel):
    def __init__(self, num_classes: int, dropout: float = 0.5, l2_lambda: float = 1e-4,
                 width: float = 1.0, input_size: int = 48):
        super().__init__()
        if input_size % 8:
            raise ValueError(f"deepfer needs an input size divisible by 8 (three 2x2 pools), "
                             f"got {input_size}")
        self.l2_lambda = l2_lambda
        c1, c2, c3, c4 = (max(4, int(round(c * width))) for c in (32, 64, 128, 256))
        side = input_size // 8
        self.stn = SpatialTransformer(1, input_size)
        self.features = nn.Sequential(
            _conv(1, c1), _conv(c1, c1), nn.MaxPool2d(2), nn.ReLU(True),     # 48 -> 24
            _conv(c1, c2), _conv(c2, c2), nn.MaxPool2d(2), nn.ReLU(True),    # 24 -> 12
            _conv(c2, c3), _conv(c3, c3), nn.MaxPool2d(2), nn.ReLU(True),    # 12 -> 6
            _conv(c3, c4), nn.ReLU(True),                                    # seventh conv
            nn.Dropout(dropout),
        )
        self.fc = nn.ModuleList([
            nn.Linear(c4 * side * side, 256), nn.Linear(256, 128), nn.Linear(128, 64),
            nn.Linear(64, num_classes),
        ])
        for layer in [*self.features, *self.fc]:
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)

    def warp(self, x: torch.Tensor) -> torch.Tensor:
        """The STN's output: what the feature path actually sees (for attention figures)."""
        return self.stn(x)

    def fc_feature(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the third FC layer, the last one before the class scores."""
        h = self.features(self.warp(x)).flatten(1)
        for layer in self.fc[:-1]:
            h = torch.relu(layer(h))
        return h

    def forward(self, x):
        return self.fc[-1](self.fc_feature(x))

    def loss(self, logits, targets):
        return self.classification_loss(logits, targets) + self.l2_lambda * fc_l2(self.fc)

    face_like_maps = ("stn_warp",)

    def attention_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The STN's warp and sampling density, and a saliency map of the classifier.

        The paper shows "saliency maps" of the face's most striking areas without defining
        them (it cites Happy & Routray's salient patches); ours is gradient saliency.
        """
        return {**self.stn.attention_maps(x), **super().attention_maps(x)}

    def representations(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"fc_feature": self.fc_feature(x)}
