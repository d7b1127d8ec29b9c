"""DCGAN generator and discriminator for DE-Capsnet's data augmentation.

DE-Capsnet (de-capsnet-privacy-preserving-fer.txt, §1 and §3.1.2) adapts "Deep Convolutional
Generative Adversarial Network (DCGAN) for data augmentation" in the low-data regime and states
nothing else about it: no layout, optimiser, epochs or sample count. Everything here is
therefore Radford, Metz & Chintala, ICLR 2016 ("Unsupervised representation learning with deep
convolutional GANs": §3 architecture guidelines, §4 training details, Fig. 1), and where that
text is silent, its reference code (github.com/Newmu/dcgan_code, faces/train_uncond_dcgan.py):

- generator: z ~ U(-1, 1)^latent_dim -> dense projection reshaped to (8w, s0, s0) -> four
  fractionally strided 5x5 convolutions, stride 2, each doubling the side and halving the
  channels (8w -> 4w -> 2w -> w -> 1); batch norm + ReLU after every layer but the tanh output;
- discriminator: the mirror image, four strided 5x5 convolutions (1 -> w -> 2w -> 4w -> 8w)
  with LeakyReLU 0.2, batch norm on every layer but the input one, then a dense layer to one
  logit; no pooling, no fully connected hidden layers;
- no biases (batch norm's shift takes their place, as in the reference code), weights
  N(0, 0.02), batch-norm gains N(1, 0.02) and shifts 0.

Sides: four stride-2 stages from an s0 x s0 start make the network's side 16 * s0 (the paper's
64 x 64 faces start at 4 x 4; 48 x 48 faces start at 3 x 3). `network_side` maps any face
side to the nearest such side, and the augmentation resizes faces in and samples out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STAGES = 4  # stride-2 layers per network, as in the paper's 64 x 64 models
SIDE_STEP = 2 ** STAGES
MIN_START = 2  # batch norm needs more than one value per channel, even for a one-face batch
LEAKY_SLOPE = 0.2
INIT_STD = 0.02
KERNEL = 5  # the reference code's 5x5 kernels; padding 2 makes stride 2 halve/double exactly


def network_side(face_side: int) -> int:
    """The side the networks run at: the multiple of 16 nearest to the face side, >= 32."""
    return SIDE_STEP * max(MIN_START, int(face_side / SIDE_STEP + 0.5))


def _start_side(side: int) -> int:
    if side % SIDE_STEP or side < SIDE_STEP * MIN_START:
        raise ValueError(f"DCGAN side must be a multiple of {SIDE_STEP} and at least "
                         f"{SIDE_STEP * MIN_START}, got {side} (see network_side)")
    return side // SIDE_STEP


def _channels(width: int) -> list[int]:
    """Feature maps from the smallest spatial stage to the largest: 8w, 4w, 2w, w."""
    return [width * 2 ** (STAGES - 1 - stage) for stage in range(STAGES)]


class Generator(nn.Module):
    """z (B, latent_dim) in [-1, 1] -> images (B, 1, side, side) in [-1, 1]."""

    def __init__(self, side: int = 64, latent_dim: int = 100, width: int = 128):
        super().__init__()
        self.start = _start_side(side)
        channels = _channels(width)
        self.start_channels = channels[0]
        self.project = nn.Linear(latent_dim, channels[0] * self.start ** 2, bias=False)
        layers: list[nn.Module] = [nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True)]
        for wide, narrow in zip(channels, channels[1:]):
            layers += [_upsample(wide, narrow), nn.BatchNorm2d(narrow), nn.ReLU(inplace=True)]
        layers += [_upsample(channels[-1], 1), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        start = self.project(latent).view(-1, self.start_channels, self.start, self.start)
        return self.body(start)


class Discriminator(nn.Module):
    """Images (B, 1, side, side) in [-1, 1] -> one real-vs-generated logit per image."""

    def __init__(self, side: int = 64, width: int = 128):
        super().__init__()
        start = _start_side(side)
        channels = _channels(width)[::-1]
        layers: list[nn.Module] = [_downsample(1, channels[0]), nn.LeakyReLU(LEAKY_SLOPE, True)]
        for narrow, wide in zip(channels, channels[1:]):
            layers += [_downsample(narrow, wide), nn.BatchNorm2d(wide),
                       nn.LeakyReLU(LEAKY_SLOPE, inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classify = nn.Linear(channels[-1] * start ** 2, 1, bias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(images).flatten(1)).squeeze(1)


def _upsample(in_channels: int, out_channels: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(in_channels, out_channels, KERNEL, stride=2, padding=KERNEL // 2,
                              output_padding=1, bias=False)


def _downsample(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, KERNEL, stride=2, padding=KERNEL // 2, bias=False)


def initialise(network: nn.Module, generator: torch.Generator) -> nn.Module:
    """Radford et al. §4: weights N(0, 0.02); batch-norm gains N(1, 0.02) as in the reference
    code. Drawn from `generator` alone, so the weights do not depend on torch's global seed."""
    for module in network.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(module.weight, 0.0, INIT_STD, generator=generator)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.weight, 1.0, INIT_STD, generator=generator)
            nn.init.zeros_(module.bias)
    return network


def sample_latent(count: int, latent_dim: int, generator: torch.Generator) -> torch.Tensor:
    """Radford et al. Fig. 1: a uniform distribution Z, in [-1, 1] as in the reference code."""
    return torch.rand(count, latent_dim, generator=generator) * 2.0 - 1.0


def adversarial_step(gen: Generator, disc: Discriminator, gen_optimiser, disc_optimiser,
                     real: torch.Tensor, latent: torch.Tensor) -> tuple[float, float]:
    """One discriminator then one generator update on a batch (Goodfellow et al. 2014,
    Algorithm 1 with k = 1); the generator maximises log D(G(z)) (their non-saturating loss).
    Real and generated images pass the discriminator separately, so each batch-norm call sees
    one kind only, as in the reference code. Returns (discriminator loss, generator loss)."""
    fake = gen(latent)
    real_logits, fake_logits = disc(real), disc(fake.detach())
    disc_loss = (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                 + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
    disc_optimiser.zero_grad(set_to_none=True)
    disc_loss.backward()
    disc_optimiser.step()

    fooled_logits = disc(fake)
    gen_loss = F.binary_cross_entropy_with_logits(fooled_logits, torch.ones_like(fooled_logits))
    gen_optimiser.zero_grad(set_to_none=True)
    gen_loss.backward()
    gen_optimiser.step()
    return disc_loss.item(), gen_loss.item()
