"""E2-Capsnet, DE-Capsnet and the E2-Capsnet Table 1 ablations, read beside
`papers/e2-capsnet-au-attention.txt` and `papers/de-capsnet-privacy-preserving-fer.txt`.

Enhancement module 1: VGG's five conv stages (VGG16 for E2-Capsnet, VGG19's 2,2,4,4,4 for
DE-Capsnet). The AU attention map multiplies the features pooled by stage 2; that branch runs
parallel to stage 3's convs, is added to their output and the sum goes through stage 3's pool;
stage 4 does the same with stage 3's pooled features. The papers do not say how the branch
meets convs with twice its channels: a 1x1 conv projects it (SPEC decision).

Enhancement module 2: the 512x7x7 maps go through a 2x2 conv, stride 1, to 256x6x6, which
"are then adjusted to the PrimaryCaps layer with 32 convolution 8D capsule channels": 256 =
32 x 8, so that conv *is* the PrimaryCaps conv, and its 6x6x32 = 1152 capsules match Sabour et
al.'s PrimaryCaps exactly. Three routing iterations (Sabour et al. Procedure 1, Eq. 2-3) lead to
one 16D FaceCap per class; the class score is the capsule's length, squashed by Eq. 2. The
decoder (Sabour et al.: FC 512, FC 1024, FC sigmoid) reconstructs the grayscale face, mapped
to [0, 1], from the FaceCaps with all but the true class's masked.
Loss: L = L_c + 0.0005 L_r (Eq. 3-5), margin loss with m+ 0.9, m- 0.1, lambda 0.5.

Reconstruction size: Eq. 4 compares the reconstruction with "the original image", the
224x224 input, so L_r sums 50176 squared pixel errors, and 0.0005 weighs that sum against L_c.
A last FC layer of 1024 x 50176 would hold 51M weights (3.5x VGG16's convs), so the decoder
outputs `reconstruction_size` (28, Sabour et al.'s) pixels a side, enlarged bilinearly to the
input's side, and L_r is summed over the input's pixels: the term weighs what the paper's
does (summing at 28x28, as before, made it (224/28)^2 = 64x lighter) at the cost of a 28x28
decoder.

Ablations (E2-Capsnet Table 1): `vgg16` (trunk + VGG's FC classifier, cross-entropy),
`avggnet` (the attentive trunk + FC classifier), `rccnet` (trunk + capsules, no attention) and
`capsnet` (Sabour et al.'s CapsNet on the raw face: 9x9 conv 256, PrimaryCaps 9x9 stride 2,
DigitCaps, decoder). The paper gives no input size for `capsnet`; it keeps Sabour et al.'s 28
(1152 primary capsules): at 224 its DigitCaps would hold 310M weights.

Input: attention models (`extra_channels = ("au_attention",)`) take x of shape (B, 2, S, S):
channel 0 the face, channel 1 its AU attention map (`au_attention.attention_map`), both
scaled like images to [-1, 1] (the map's weights w in [0, 1] as 2w - 1). The data pipeline
appends the map (ferbench.inputs) so the training loop stays generic. The others take
(B, 1, S, S).

`width` scales the VGG and conv channels (not the capsules) so tests and the CPU demo can run
at small input sizes; capsule variants on VGG need input_size >= 64 (a 2x2 trunk output).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ferbench.models.base import Classifier, FERModel
from ferbench.models.losses import margin_loss, reconstruction_loss
from ferbench.models.vgg import TRUNK_DEFAULTS, VGGTrunk, fully_connected_head, scaled_channels

PRIMARY_CAPSULES, PRIMARY_DIM, CLASS_DIM = 32, 8, 16
#: Stages (0-based) whose conv output receives the attended branch: VGG stages 3 and 4.
ATTENDED_STAGES = (2, 3)

_TRAINING = {
    "optimizer": "adam",
    "lr": 1e-4,
    "weight_decay": 0.0,
    "batch_size": 16,
    "epochs": 300,      # the papers' "maximum iteration 300"
    "patience": 20,     # ours: the papers give no early stopping
    "width": 1.0,
}
_VGG_TRUNK = {**_TRAINING, **TRUNK_DEFAULTS, "input_size": 224}
_CAPSULES = {"routing_iterations": 3, "reconstruction_size": 28,
             "reconstruction_weight": 0.0005}
CAPSULE_DEFAULTS = {**_VGG_TRUNK, **_CAPSULES}
CLASSIFIER_DEFAULTS = {**_VGG_TRUNK, "dropout": 0.5}
SABOUR_DEFAULTS = {**_TRAINING, **_CAPSULES, "input_size": 28}


def squash(s: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """v = ||s||^2 / (1 + ||s||^2) * s / ||s|| (E2-Capsnet Eq. 2, Sabour et al. Eq. 1)."""
    norm_sq = s.pow(2).sum(dim, keepdim=True)
    return norm_sq / (1 + norm_sq) * s / torch.sqrt(norm_sq + eps)


def dynamic_routing(predictions: torch.Tensor, iterations: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Routing by agreement (Sabour et al. Procedure 1): (outputs v_j, coupling c_ij).

    `predictions` are u_hat_{j|i} = W_ij u_i, shaped (B, in capsules, out capsules, D).
    c_ij = softmax_j(b_ij) (Eq. 3), s_j = sum_i c_ij u_hat_{j|i} (Eq. 2), v_j = squash(s_j),
    and b_ij grows by the agreement u_hat_{j|i} . v_j between iterations.
    """
    logits = predictions.new_zeros(predictions.shape[:3])
    for iteration in range(iterations):
        coupling = logits.softmax(dim=2)
        outputs = squash((coupling.unsqueeze(-1) * predictions).sum(1))
        if iteration < iterations - 1:
            logits = logits + (predictions * outputs.unsqueeze(1)).sum(-1)
    return outputs, coupling


class PrimaryCapsules(nn.Module):
    """A conv whose channels are 32 capsule types x 8D, read out as squashed 8D capsules."""

    def __init__(self, in_channels: int, kernel_size: int, stride: int):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride
        self.conv = nn.Conv2d(in_channels, PRIMARY_CAPSULES * PRIMARY_DIM, kernel_size, stride)

    def count(self, in_side: int) -> int:
        """Number of capsules for an in_side x in_side input."""
        out_side = (in_side - self.kernel_size) // self.stride + 1
        if out_side < 1:
            raise ValueError(f"PrimaryCaps' {self.kernel_size}x{self.kernel_size} conv needs "
                             f"at least that many input pixels, got {in_side}x{in_side}: "
                             f"raise input_size")
        return PRIMARY_CAPSULES * out_side * out_side

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = self.conv(features)
        batch, _, height, width = h.shape
        capsules = h.view(batch, PRIMARY_CAPSULES, PRIMARY_DIM, height, width)
        return squash(capsules.permute(0, 1, 3, 4, 2).reshape(batch, -1, PRIMARY_DIM))


class RoutedCapsules(nn.Module):
    """FaceCaps / DigitCaps: one 16D capsule per class, each fed by every primary capsule.

    Neither paper gives an initialisation; each 16x8 W_ij is Glorot-normal. With a small
    std (0.01) the class capsules of the VGG variants start at length ~1e-5, where the
    squash's gradient (~2 ||s||) all but vanishes.
    """

    def __init__(self, in_capsules: int, out_capsules: int, iterations: int):
        super().__init__()
        self.iterations = iterations
        glorot_std = (2 / (PRIMARY_DIM + CLASS_DIM)) ** 0.5
        self.weight = nn.Parameter(glorot_std * torch.randn(in_capsules, out_capsules,
                                                            CLASS_DIM, PRIMARY_DIM))

    def forward(self, primary: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(capsules (B, K, 16), coupling coefficients (B, in capsules, K))."""
        predictions = torch.einsum("iodk,bik->biod", self.weight, primary)
        return dynamic_routing(predictions, self.iterations)


class CapsuleHead(Classifier):
    """PrimaryCaps -> routing -> class capsules, their lengths as scores, and the decoder."""

    def __init__(self, num_classes: int, in_channels: int, in_side: int, kernel_size: int,
                 stride: int, routing_iterations: int, reconstruction_size: int,
                 reconstruction_weight: float):
        super().__init__()
        self.primary = PrimaryCapsules(in_channels, kernel_size, stride)
        self.classes = RoutedCapsules(self.primary.count(in_side), num_classes,
                                      routing_iterations)
        self.reconstruction_size = reconstruction_size
        self.reconstruction_weight = reconstruction_weight
        self.decoder = nn.Sequential(
            nn.Linear(num_classes * CLASS_DIM, 512), nn.ReLU(inplace=True),
            nn.Linear(512, 1024), nn.ReLU(inplace=True),
            nn.Linear(1024, reconstruction_size ** 2), nn.Sigmoid(),
        )

    def capsules(self, features: torch.Tensor) -> torch.Tensor:
        return self.classes(self.primary(features))[0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.capsules(features).norm(dim=-1)

    def reconstruct(self, capsules: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, 1, r, r) faces decoded from the `labels` capsules, the others masked to 0."""
        mask = F.one_hot(labels, capsules.shape[1]).to(capsules.dtype).unsqueeze(-1)
        side = self.reconstruction_size
        return self.decoder((capsules * mask).flatten(1)).view(-1, 1, side, side)

    def full_size_reconstruction(self, capsules: torch.Tensor, labels: torch.Tensor,
                                 side: int) -> torch.Tensor:
        """(B, 1, side, side): `reconstruct`'s face enlarged bilinearly to the input's side."""
        return F.interpolate(self.reconstruct(capsules, labels), size=(side, side),
                             mode="bilinear", align_corners=False)

    def objective(self, features, face, targets):
        """L = L_c + 0.0005 L_r (Eq. 5), L_r over the input face's pixels mapped to [0, 1].

        A recipe's class weights weight each sample's L_c; label smoothing does not apply:
        the margins m+ 0.9, m- 0.1 already stop pushing lengths to 1 and 0."""
        capsules = self.capsules(features)
        lengths = capsules.norm(dim=-1)
        reconstruction = self.full_size_reconstruction(capsules, targets, face.shape[-1])
        loss = margin_loss(lengths, targets, self.weights_for(lengths)) + (
            self.reconstruction_weight * reconstruction_loss(reconstruction, (face + 1) / 2))
        return loss, lengths

    def representations(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Class capsule lengths (the scores) and their 16D poses (E2-Capsnet Fig. 3's t-SNE)."""
        capsules = self.capsules(features)
        return {"capsule_lengths": capsules.norm(dim=-1), "capsule_poses": capsules.flatten(1)}


class VGGClassifier(Classifier):
    """VGG's FC 4096 - FC 4096 - FC K head with dropout, trained with cross-entropy."""

    def __init__(self, num_classes: int, in_channels: int, in_side: int, width: float,
                 dropout: float):
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), *fully_connected_head(
            in_channels * in_side * in_side, num_classes, width, dropout))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)

    def objective(self, features, face, targets):
        logits = self(features)
        return self.classification_loss(logits, targets), logits

    def representations(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """The second 4096-wide FC layer's output, the last before the class scores."""
        return {"fc_feature": self.layers[:-1](features)}


class AttentiveVGG(nn.Module):
    """VGG stages; with `attention`, the AU map enhances stages 3 and 4 (enhancement module 1)."""

    def __init__(self, layout: str, width: float, attention: bool, batch_norm: bool = False):
        super().__init__()
        self.trunk = VGGTrunk(layout, in_channels=1, width=width, batch_norm=batch_norm)
        self.out_channels = self.trunk.out_channels
        channels = (1, *self.trunk.stage_channels)
        self.projections = nn.ModuleDict({
            str(stage): nn.Identity() if channels[stage] == channels[stage + 1]
            else nn.Conv2d(channels[stage], channels[stage + 1], kernel_size=1)
            for stage in ATTENDED_STAGES
        }) if attention else None

    def forward(self, face: torch.Tensor, attention: torch.Tensor | None) -> torch.Tensor:
        h = face
        for index, stage in enumerate(self.trunk.stages):
            if self.projections is not None and index in ATTENDED_STAGES:
                local = F.interpolate(attention, size=h.shape[-2:], mode="area")
                h = stage[-1](stage[:-1](h) + self.projections[str(index)](h * local))
            else:
                h = stage(h)
        return h


class FeaturesAndHead(FERModel):
    """A feature extractor and a head; the head's objective is the model's loss."""

    extra_channels: tuple[str, ...] = ()

    def features(self, face: torch.Tensor, attention: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    @property
    def full_precision(self) -> bool:
        """Capsule routing and squash stay float32 under mixed precision (train.autocast_dtype)."""
        return isinstance(self.head, CapsuleHead)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        expected = 1 + len(self.extra_channels)
        if x.shape[1] != expected:
            raise ValueError(f"{type(self).__name__} takes {expected} input channels (face"
                             f"{''.join(', ' + c for c in self.extra_channels)}), got {x.shape[1]}")
        # The map travels like an image, scaled to [-1, 1] by train.as_input: back to [0, 1].
        return self.features(x[:, :1], (x[:, 1:2] + 1) / 2 if self.extra_channels else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self._features(x))

    def objective(self, x, targets):
        return self.head.objective(self._features(x), x[:, :1], targets)

    def attention_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The AU attention map the model was given (channel 1, back in [0, 1] as `_features`
        reads it), beside the gradient saliency over the face."""
        maps = super().attention_maps(x)
        if self.extra_channels:
            maps = {"au_attention": (x[:, 1] + 1) / 2, **maps}
        return maps

    def representations(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.head.representations(self._features(x))


class VGGExpressionNet(FeaturesAndHead):
    """E2-Capsnet's design; subclasses choose the VGG layout, attention and head."""

    layout = "vgg16"
    capsules = True

    def __init__(self, num_classes: int, width: float = 1.0, input_size: int = 224,
                 routing_iterations: int = 3, reconstruction_size: int = 28,
                 reconstruction_weight: float = 0.0005, dropout: float = 0.5,
                 batch_norm: bool = False):
        super().__init__()
        self.enhance = AttentiveVGG(self.layout, width, attention=bool(self.extra_channels),
                                    batch_norm=batch_norm)
        side, channels = input_size // 32, self.enhance.out_channels
        if self.capsules:
            self.head = CapsuleHead(num_classes, channels, side, kernel_size=2, stride=1,
                                    routing_iterations=routing_iterations,
                                    reconstruction_size=reconstruction_size,
                                    reconstruction_weight=reconstruction_weight)
        elif side < 1:
            raise ValueError(f"{type(self).__name__} needs input_size >= 32, got {input_size}")
        else:
            self.head = VGGClassifier(num_classes, channels, side, width, dropout)

    def features(self, face, attention):
        return self.enhance(face, attention)


class E2CapsNet(VGGExpressionNet):
    """VGG16 + AU attention + capsules (Table 1: all three enhancements)."""

    extra_channels = ("au_attention",)


class DECapsNet(E2CapsNet):
    """E2-Capsnet's design on VGG19, as DE-Capsnet's implementation details state."""

    layout = "vgg19"


class RCCNet(VGGExpressionNet):
    """E2-Capsnet without attention (Table 1: dynamic routing + rich convolution)."""


class VGG16(VGGExpressionNet):
    """Table 1 baseline: VGG16 with its FC classifier."""

    capsules = False


class AVGGNet(VGG16):
    """Table 1: VGG16 with AU attention and its FC classifier."""

    extra_channels = ("au_attention",)


class CapsNet(FeaturesAndHead):
    """Sabour et al.'s CapsNet: Conv1 9x9 256 + ReLU, PrimaryCaps 9x9 stride 2, DigitCaps."""

    def __init__(self, num_classes: int, width: float = 1.0, input_size: int = 28,
                 routing_iterations: int = 3, reconstruction_size: int = 28,
                 reconstruction_weight: float = 0.0005):
        super().__init__()
        channels = scaled_channels(256, width)
        self.conv = nn.Sequential(nn.Conv2d(1, channels, kernel_size=9), nn.ReLU(inplace=True))
        self.head = CapsuleHead(num_classes, channels, input_size - 8, kernel_size=9, stride=2,
                                routing_iterations=routing_iterations,
                                reconstruction_size=reconstruction_size,
                                reconstruction_weight=reconstruction_weight)

    def features(self, face, attention):
        return self.conv(face)
