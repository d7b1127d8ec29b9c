"""Spatial transformer (Jaderberg et al. 2015) as used by Deep-Emotion and DeepFER.

The localisation network regresses the six parameters of an affine theta; the final layer
starts at zero weight and identity bias so training begins from the unwarped input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SpatialTransformer(nn.Module):
    """Localisation net (conv7-pool-ReLU-conv5-pool-ReLU-FC-ReLU-FC) + affine grid sampler."""

    def __init__(self, in_channels: int = 1, input_size: int = 48):
        super().__init__()
        self.localisation = nn.Sequential(
            nn.Conv2d(in_channels, 8, kernel_size=7),
            nn.MaxPool2d(2, stride=2),
            nn.ReLU(True),
            nn.Conv2d(8, 10, kernel_size=5),
            nn.MaxPool2d(2, stride=2),
            nn.ReLU(True),
        )
        side = ((input_size - 6) // 2 - 4) // 2
        self.regressor = nn.Sequential(nn.Linear(10 * side * side, 32), nn.ReLU(True), nn.Linear(32, 6))
        nn.init.zeros_(self.regressor[2].weight)
        with torch.no_grad():
            self.regressor[2].bias.copy_(torch.tensor([1, 0, 0, 0, 1, 0], dtype=torch.float))

    def theta(self, x: torch.Tensor) -> torch.Tensor:
        return self.regressor(self.localisation(x).flatten(1)).view(-1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = F.affine_grid(self.theta(x), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, align_corners=False)
