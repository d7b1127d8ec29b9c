"""Losses shared by the models, each a small function testable against a hand-computed value."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn


def fc_l2(layers: Iterable[nn.Linear]) -> torch.Tensor:
    """Squared L2 norm of the weights of the given fully connected layers (DeepFER Eq. 1)."""
    return sum(layer.weight.pow(2).sum() for layer in layers)


def cross_entropy_fc_l2(logits: torch.Tensor, targets: torch.Tensor, layers: Iterable[nn.Linear],
                        lam: float) -> torch.Tensor:
    """L_overall = L_classifier + lambda * ||w(fc)||_2^2 (DeepFER Eq. 1)."""
    return F.cross_entropy(logits, targets) + lam * fc_l2(layers)
