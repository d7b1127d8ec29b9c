"""The contract between every model and the training loop."""

from __future__ import annotations

import torch
from torch import nn


class FERModel(nn.Module):
    """A model maps a (B, 1, input_size, input_size) batch in [-1, 1] to class scores.

    The training loop only calls `objective`; it returns the paper's loss and the scores,
    so models whose loss needs more than the logits (a center loss on pooled features, a
    capsule decoder's reconstruction) compute it from their own intermediate results.
    """

    input_size: int = 48

    def objective(self, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits) of one batch; the default is `loss(forward(x), targets)`."""
        logits = self(x)
        return self.loss(logits, targets), logits

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} defines neither loss nor objective")
