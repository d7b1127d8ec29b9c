"""DE-Capsnet's DCGAN augmentation: one DCGAN per class, trained on one fold's training faces.

DE-Capsnet (§3.1.2) uses a DCGAN "to automatically learn the augmented data in the low-data
setting"; its generated faces join the training set. Here that happens per fold: validation
and test faces never reach a GAN, because the fold's training role is selected before anything
else. Each class's weights, batch order and latent draws come from one torch.Generator seeded
by (seed, fold, class), so a class's samples depend on its own training faces only and the same
inputs give the same bytes on CPU (for a fixed torch thread count). The random draws stay on
the CPU on a GPU too; only the networks and batches move.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, fields
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ferbench.models import dcgan
from ferbench.resize import resize

TABLE_COLUMNS = ["uid", "label", "subject", "copy", "augmentation"]
NO_SOURCE_UID = -1  # a generated face has no source face (and so no subject) to trace back to
SUBJECT = "dcgan"


@dataclass(frozen=True)
class DCGANOptions:
    """Mirror of the config's `dcgan:` block. DE-Capsnet states no DCGAN values; the defaults
    are Radford et al. 2016 and their reference code (models/dcgan.py), except
    samples_per_class, which neither paper gives."""

    epochs: int = 25  # reference code's niter for its faces model
    batch_size: int = 128  # Radford et al. §4
    latent_dim: int = 100  # Radford et al. Fig. 1
    width: int = 128  # feature maps of the widest-side layer; 8 * 128 = Fig. 1's 1024
    lr: float = 2e-4  # Radford et al. §4 (1e-3 was too high)
    beta1: float = 0.5  # Radford et al. §4 (0.9 oscillated)
    weight_decay: float = 1e-5  # reference code's L2 regulariser on both networks
    samples_per_class: int = 100  # our choice: about a CK+ class's training faces per fold

    @classmethod
    def from_config(cls, block: dict) -> "DCGANOptions":
        known = sorted(field.name for field in fields(cls))
        unknown = sorted(set(block) - set(known))
        if unknown:
            raise ValueError(f"dcgan option {unknown[0]!r} is unknown (known: {', '.join(known)})")
        return cls(**block)


def class_seed(seed: int, fold: int, label: str) -> int:
    """A class's own seed: independent of which other classes the fold holds."""
    entropy = [seed, fold, zlib.crc32(label.encode())]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)


def _resized(images: np.ndarray, side: int) -> np.ndarray:
    if images.shape[1] == side:
        return images
    return np.stack([resize(image, side) for image in images])


def to_network(faces: np.ndarray, side: int) -> torch.Tensor:
    """uint8 faces -> (N, 1, side, side) floats in tanh's range [-1, 1] (Radford et al. §4)."""
    pixels = torch.from_numpy(_resized(faces, side).astype(np.float32))
    return (pixels / 127.5 - 1.0).unsqueeze(1)


def to_faces(images: torch.Tensor, face_side: int) -> np.ndarray:
    """Generator output in [-1, 1] -> uint8 faces of the dataset's own side."""
    pixels = np.rint((images.squeeze(1).numpy() + 1.0) * 127.5)
    return _resized(np.clip(pixels, 0, 255).astype(np.uint8), face_side)


def _even_batches(count: int, batch_size: int, generator: torch.Generator):
    """A shuffled epoch split into ceil(count / batch_size) near-equal batches, so batch norm
    never sees a one-image remainder and no face is dropped."""
    order = torch.randperm(count, generator=generator)
    return torch.tensor_split(order, math.ceil(count / batch_size))


def train_class(faces: np.ndarray, options: DCGANOptions, generator: torch.Generator,
                bar: tqdm, device: torch.device) -> dcgan.Generator:
    """Train one DCGAN on one class's faces; `bar` advances once per epoch."""
    side = dcgan.network_side(faces.shape[1])
    real = to_network(faces, side).to(device)
    gen = dcgan.initialise(dcgan.Generator(side, options.latent_dim, options.width),
                           generator).to(device)
    disc = dcgan.initialise(dcgan.Discriminator(side, options.width), generator).to(device)
    gen_optimiser, disc_optimiser = (
        torch.optim.Adam(network.parameters(), lr=options.lr, betas=(options.beta1, 0.999),
                         weight_decay=options.weight_decay)
        for network in (gen, disc))
    for _ in range(options.epochs):
        for batch in _even_batches(len(real), options.batch_size, generator):
            latent = dcgan.sample_latent(len(batch), options.latent_dim, generator).to(device)
            disc_loss, gen_loss = dcgan.adversarial_step(gen, disc, gen_optimiser, disc_optimiser,
                                                         real[batch.to(device)], latent)
        bar.set_postfix(loss_d=f"{disc_loss:.3f}", loss_g=f"{gen_loss:.3f}")
        bar.update(1)
    return gen


@torch.no_grad()
def sample(gen: dcgan.Generator, count: int, options: DCGANOptions,
           generator: torch.Generator) -> torch.Tensor:
    """`count` generated images, drawn in batches of batch_size that are normalised by their own
    statistics, as the reference code's batch norm (it keeps no running averages) does."""
    gen.train()
    device = next(gen.parameters()).device
    sizes = [len(chunk) for chunk in torch.arange(count).tensor_split(
        math.ceil(count / options.batch_size))]
    return torch.cat([gen(dcgan.sample_latent(size, options.latent_dim, generator).to(device))
                      for size in sizes]).cpu()


def generate_fold(faces: np.ndarray, folds: pd.DataFrame, fold: int, options: DCGANOptions,
                  seed: int, progress: bool = True,
                  device: torch.device = torch.device("cpu")) -> tuple[np.ndarray, pd.DataFrame]:
    """samples_per_class generated faces for every class of one fold's training role.

    Returns the uint8 faces (M, S, S) and their table (uid -1, label, subject "dcgan", copy =
    sample index, augmentation naming the class and epochs), classes in sorted order.
    """
    if faces.ndim != 3 or faces.shape[1] != faces.shape[2]:
        raise ValueError(f"DCGAN augmentation needs square greyscale faces (N, S, S), "
                         f"got shape {faces.shape}")
    train = folds[(folds["fold"] == fold) & (folds["role"] == "train")]
    labels = sorted(train["label"].unique())
    images, rows = [], []
    with tqdm(total=len(labels) * options.epochs, desc=f"dcgan fold {fold}", unit="epoch",
              disable=not progress) as bar:
        for label in labels:
            bar.set_description(f"dcgan fold {fold} {label}")
            uids = np.sort(train.loc[train["label"] == label, "uid"].to_numpy())
            generator = torch.Generator().manual_seed(class_seed(seed, fold, label))
            gen = train_class(faces[uids], options, generator, bar, device)
            generated = sample(gen, options.samples_per_class, options, generator)
            images.append(to_faces(generated, faces.shape[1]))
            description = f"dcgan class={label} epoch={options.epochs}"
            rows += [(NO_SOURCE_UID, label, SUBJECT, copy, description)
                     for copy in range(options.samples_per_class)]
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    array = np.concatenate(images) if images else np.zeros((0,) + faces.shape[1:], np.uint8)
    return array, table


def sample_sheet(array: np.ndarray, table: pd.DataFrame, path, per_row: int = 10) -> Path:
    """One row of generated faces per class, the class name written on its first face."""
    from ferbench.faces import write_grid

    tiles = []
    for label, rows in table.groupby("label", sort=True):
        row = [array[i].copy() for i in rows.index[:per_row]]
        cv2.putText(row[0], label, (2, 10), cv2.FONT_HERSHEY_PLAIN, 0.7, 255, 1)
        tiles += row + [np.zeros_like(row[0])] * (per_row - len(row))
    return write_grid(tiles or [np.zeros(array.shape[1:], np.uint8)], Path(path), per_row)
