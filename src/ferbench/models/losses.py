"""Losses shared by the models, each a small function testable against a hand-computed value."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn


def fc_l2(layers: Iterable[nn.Linear]) -> torch.Tensor:
    """Squared L2 norm of the weights of the given fully connected layers (DeepFER Eq. 1)."""
    return sum(layer.weight.pow(2).sum() for layer in layers)


def serd_regulariser(mask: torch.Tensor, gamma1: float, gamma2: float) -> torch.Tensor:
    """L_reg = gamma1 ||M||_1^2 + gamma2 ||1 - M * M||_F^2 (DAM-CNN Eq. 3), batch mean.

    `mask` is (B, ...) with one attentive mask per sample. The first term keeps the mask
    sparse, the second pushes each weight away from 0; their balance leaves a few large weights.
    """
    per_sample = mask.flatten(1)
    sparsity = per_sample.abs().sum(1).pow(2)
    saturation = (1 - per_sample * per_sample).pow(2).sum(1)
    return (gamma1 * sparsity + gamma2 * saturation).mean()


def mpae_reconstruction(reconstructions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """J_all = sum_j J_j, J_j = 1/n sum_i ||s_hat_i^j - s_i^j||_2^2 (DAM-CNN Eq. 8-9).

    Both tensors are (N decoders, B samples, ...): decoder j's outputs and its targets.
    """
    squared_error = (reconstructions - targets).pow(2).flatten(2).sum(2)
    return squared_error.mean(1).sum()


def center_loss(features: torch.Tensor, targets: torch.Tensor,
                centres: torch.Tensor) -> torch.Tensor:
    """L_CL = 1/2 sum_i ||x_i - c_{y_i}||_2^2 (MobileNet-CL Eq. 1), batch mean.

    The paper's Eq. 1 drops the square of Wen et al.'s center loss, whose centre update (Eq. 2)
    is the gradient of the squared form; we follow Wen et al. Only the features get a
    gradient: the centres move by `update_centres`, not by backpropagation.
    """
    return 0.5 * (features - centres[targets].detach()).pow(2).sum(1).mean()


@torch.no_grad()
def update_centres(features: torch.Tensor, targets: torch.Tensor, centres: torch.Tensor,
                   alpha: float) -> torch.Tensor:
    """c_j <- c_j - alpha * Delta c_j (MobileNet-CL Eq. 2), the new centres.

    Delta c_j = sum_i [y_i = j] (c_j - x_i) / (1 + sum_i [y_i = j]) (Wen et al. 2016): the
    1 in the denominator keeps a class seen once in a batch from jumping onto one sample, and
    a class absent from the batch does not move. One-hot sums instead of a scatter keep the
    update deterministic on GPUs.
    """
    features = features.to(centres.dtype)  # bfloat16 under autocast; centres stay float32
    one_hot = F.one_hot(targets, len(centres)).to(features.dtype)
    counts = one_hot.sum(0).unsqueeze(1)
    delta = (counts * centres - one_hot.T @ features) / (1 + counts)
    return centres - alpha * delta


def margin_loss(lengths: torch.Tensor, targets: torch.Tensor,
                class_weights: torch.Tensor | None = None, m_plus: float = 0.9,
                m_minus: float = 0.1, lam: float = 0.5) -> torch.Tensor:
    """L_c = T_c max(0, m+ - ||v_c||)^2 + lambda (1 - T_c) max(0, ||v_c|| - m-)^2
    (E2-Capsnet Eq. 3, Sabour et al. Eq. 4), summed over classes, batch mean.

    `lengths` are the (B, K) capsule lengths ||v_c||; lambda down-weights absent classes so
    early training does not shrink every capsule. With `class_weights` (K,), the mean is
    weighted by each sample's class weight, as F.cross_entropy's `weight` does.
    """
    present = F.one_hot(targets, lengths.shape[1]).to(lengths.dtype)
    loss = (present * F.relu(m_plus - lengths).pow(2)
            + lam * (1 - present) * F.relu(lengths - m_minus).pow(2)).sum(1)
    if class_weights is None:
        return loss.mean()
    weights = class_weights[targets].to(loss.dtype)
    return (weights * loss).sum() / weights.sum()


def reconstruction_loss(reconstructions: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """L_r = (x_r - x)^2 (E2-Capsnet Eq. 4): sum of squared pixel errors per image, batch mean."""
    return (reconstructions - images).pow(2).flatten(1).sum(1).mean()
