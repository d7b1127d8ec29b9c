"""The contract between every model and the training loop."""

from __future__ import annotations

import torch
from torch import nn


class FERModel(nn.Module):
    """A model maps a (B, 1, input_size, input_size) batch in [-1, 1] to class scores.

    `input_size` is a constructor argument with the paper's value in the module's DEFAULTS.

    The training loop only calls `objective`; it returns the paper's loss and the scores,
    so models whose loss needs more than the logits (a center loss on pooled features, a
    capsule decoder's reconstruction) compute it from their own intermediate results.
    """

    def prepare(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        """See the whole training split once before training starts (and again after a resume).

        `images` are the split's uint8 (N, 1, S, S) faces, `targets` their class indices. A
        model whose loss needs other training samples than the batch (DAM-CNN's decoders
        reconstruct same-class samples) caches what it needs here; it must not change any
        parameter, so a resumed run stays identical. The default does nothing.
        """

    def objective(self, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits) of one batch; the default is `loss(forward(x), targets)`."""
        logits = self(x)
        return self.loss(logits, targets), logits

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} defines neither loss nor objective")
