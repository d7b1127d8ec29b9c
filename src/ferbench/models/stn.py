"""Spatial transformer (Jaderberg et al. 2015) as used by Deep-Emotion and DeepFER.

The localisation network regresses the six parameters of an affine theta; the final layer
starts at zero so training begins from the unwarped input. Neither paper bounds theta. We do:
theta = identity + MAX_DEVIATION * tanh(regressed). Unbounded, one DeepFER fold's first
Adam steps pushed the warp off the image (translations of 2-7 image half-widths), the
sampler then returned only zeros, and the network stayed at chance for all 20 epochs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


#: Largest change of any theta entry: up to 50% zoom, shear or shift of the half-width.
MAX_DEVIATION = 0.5


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
        self.regressor = nn.Sequential(nn.Linear(10 * side * side, 32), nn.ReLU(True),
                                       nn.Linear(32, 6))
        nn.init.zeros_(self.regressor[2].weight)
        nn.init.zeros_(self.regressor[2].bias)
        self.register_buffer("identity", torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))

    def theta(self, x: torch.Tensor) -> torch.Tensor:
        """Affine (B, 2, 3) maps, each entry within MAX_DEVIATION of the identity's."""
        deviation = torch.tanh(self.regressor(self.localisation(x).flatten(1))).view(-1, 2, 3)
        return self.identity + MAX_DEVIATION * deviation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = F.affine_grid(self.theta(x), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, align_corners=False)

    def attention_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, H, W) maps of the warp: the face the feature path sees, and where it was read.

        `stn_sampling` is the total bilinear weight each input pixel receives from the
        sampling grid (the adjoint of the sampler applied to ones, taken by autograd): high
        where the transformer zooms in, zero where the warp leaves the face out.
        """
        grid = F.affine_grid(self.theta(x), list(x.shape), align_corners=False)
        with torch.enable_grad():
            probe = torch.zeros_like(x[:, :1]).requires_grad_(True)
            resampled = F.grid_sample(probe, grid.detach(), align_corners=False)
            (sampling,) = torch.autograd.grad(resampled.sum(), probe)
        return {"stn_warp": F.grid_sample(x, grid, align_corners=False)[:, 0],
                "stn_sampling": sampling[:, 0]}
