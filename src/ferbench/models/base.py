"""The contract between every model and the training loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Classifier(nn.Module):
    """A module whose loss has a cross-entropy term, shaped by the training recipe.

    `label_smoothing` and `class_weights` (one weight per class, or None) are set by
    train.fit for the whole model (`FERModel.set_loss_recipe`) from the recipe and the
    training split's class counts; not in the state dict, so weights load as before.
    The defaults give the papers' plain cross-entropy.
    """

    label_smoothing: float = 0.0
    class_weights: torch.Tensor | None = None

    def classification_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy with the recipe's label smoothing and class weights (weighted mean)."""
        return F.cross_entropy(logits, targets, weight=self.weights_for(logits),
                               label_smoothing=self.label_smoothing)

    def weights_for(self, scores: torch.Tensor) -> torch.Tensor | None:
        """`class_weights` for (B, K) scores: on their device, 1 for classes past its end."""
        if self.class_weights is None:
            return None
        weights = self.class_weights.to(scores.device, torch.float32)
        return F.pad(weights, (0, scores.shape[1] - len(weights)), value=1.0)


class FERModel(Classifier):
    """A model maps a (B, 1, input_size, input_size) batch in [-1, 1] to class scores.

    `input_size` is a constructor argument with the paper's value in the module's DEFAULTS.

    The training loop only calls `objective`; it returns the paper's loss and the scores,
    so models whose loss needs more than the logits (a center loss on pooled features, a
    capsule decoder's reconstruction) compute it from their own intermediate results.
    """

    def load_start_weights(self, path: str, sha256: str = "") -> None:
        """Load the weights training starts from (ModelSpec.load_start calls it after building,
        for models whose registry entry names `start_weights`); never called for a model
        restored from its own state dict."""
        raise NotImplementedError(f"{type(self).__name__} starts from no weights")

    def prepare(self, images: torch.Tensor, targets: torch.Tensor,
                groups: torch.Tensor | None = None,
                sequences: torch.Tensor | None = None) -> None:
        """See the whole training split once before training starts (and again after a resume).

        `images` are the split's uint8 (N, C, S, S) faces, `targets` their class indices,
        `groups` each face's gender index (-1: unknown) when the dataset records one,
        `sequences` each face's sequence index (-1: none). A model whose loss needs other
        training samples than the batch (DAM-CNN's decoders reconstruct same-class samples)
        caches what it needs here; it must not change any parameter, so a resumed run stays
        identical. The default does nothing.
        """

    def objective(self, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits) of one batch; the default is `loss(forward(x), targets)`."""
        logits = self(x)
        return self.loss(logits, targets), logits

    def training_objective(self, x: torch.Tensor, targets: torch.Tensor,
                           samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`objective` of a training batch whose rows are `samples` of the prepared split.

        A model that fixed something per training sample in `prepare` (DAM-CNN's decoder
        targets) looks it up by these indices; the default ignores them.
        """
        return self.objective(x, targets)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} defines neither loss nor objective")

    def set_loss_recipe(self, label_smoothing: float = 0.0,
                        class_weights: torch.Tensor | None = None) -> None:
        """Shape the cross-entropy of this model and of every `Classifier` inside it (a head)."""
        for module in self.modules():
            if isinstance(module, Classifier):
                module.label_smoothing, module.class_weights = label_smoothing, class_weights

    #: Names of `attention_maps` entries that are pictures of the face (a spatial
    #: transformer's warped input), drawn as they are rather than as heatmap overlays.
    face_like_maps: tuple[str, ...] = ()

    #: torch.export can trace the forward pass (false where features are computed in numpy),
    #: so the fold's model is logged as an MLflow model.
    traceable = True

    def attention_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named (B, H, W) maps of where the model looks, for the report's heatmaps.

        A map is in the input's resolution or the model's own (the caller resizes it
        bilinearly). The default is the gradient saliency every model has; attentional
        models add their own maps (a spatial transformer's warp, an AU map, a SERD mask).
        """
        return {"saliency": gradient_saliency(self, x)}

    def representations(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named (B, D) feature vectors for t-SNE plots (DAM-CNN Fig. 6, E2-Capsnet Fig. 3).

        The default is the class scores; models override it with the representation their
        paper builds before the classifier.
        """
        return {"logits": self(x)}


def gradient_saliency(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, H, W) |d top class score / d face pixel| (Simonyan, Vedaldi & Zisserman 2014).

    Each image's own highest score is differentiated; in eval mode images do not interact,
    so one backward pass over the batch gives every image's map. Only the face channel
    (channel 0) is explained: an AU map channel is an input the model is given, not looked at.
    """
    with torch.enable_grad():
        inputs = x.detach().clone().requires_grad_(True)
        top_scores = model(inputs).max(dim=1).values.sum()
        (gradient,) = torch.autograd.grad(top_scores, inputs)
    return gradient[:, 0].abs()
