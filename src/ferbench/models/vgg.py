"""The VGG conv trunk (Simonyan & Zisserman 2014) in plain torch, shared by every VGG-based model.

E2-Capsnet, DE-Capsnet, their ablations and DAM-CNN all keep VGG's five conv stages and drop
its fully connected layers. Each stage is a run of 3x3 conv + ReLU layers ending in a 2x2
max-pool; models that act inside a stage (E2-Capsnet adds its attention branch before the
stage's pool) index `stages[i][:-1]` and `stages[i][-1]`.

`width` scales every stage's channels so tests and the CPU demo can run a narrow network;
pretrained weights only fit `width=1.0`. Convs start from He initialisation (fan-out, as in
torchvision's VGG): the papers train these trunks from scratch, and PyTorch's default init
lets the signal fade through 13-16 plain ReLU layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ferbench.models.pretrained import layers_by_module, weights_file

#: Conv layers per stage of each layout (VGG paper Table 1, configurations D and E).
LAYOUTS = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
#: Hyperparameters of every model built on the trunk: the papers' plain VGG, or (ours,
#: `batch_norm: true`) a batch norm after every conv (Ioffe & Szegedy 2015, torchvision's
#: vgg16_bn), which a trunk trained from scratch on a few hundred faces needs: plain,
#: vgg16 barely trains on JAFFE.
TRUNK_DEFAULTS = {"batch_norm": False}
STAGE_CHANNELS = (64, 128, 256, 512, 512)


def scaled_channels(channels: int, width: float) -> int:
    """Channels of a layer at `width`, at least 4 so a tiny test network still has features."""
    return max(4, int(round(channels * width)))


class VGGTrunk(nn.Module):
    """VGG's five conv stages: (B, in_channels, S, S) -> (B, out_channels, S/32, S/32)."""

    def __init__(self, layout: str = "vgg16", in_channels: int = 1, width: float = 1.0,
                 batch_norm: bool = False):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"unknown VGG layout {layout!r} (known: {', '.join(LAYOUTS)})")
        self.layout = layout
        self.stage_channels = tuple(scaled_channels(c, width) for c in STAGE_CHANNELS)
        stages, cin = [], in_channels
        for depth, cout in zip(LAYOUTS[layout], self.stage_channels):
            layers: list[nn.Module] = []
            for _ in range(depth):
                layers.append(nn.Conv2d(cin, cout, kernel_size=3, padding=1))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(cout))
                layers.append(nn.ReLU(inplace=True))
                cin = cout
            layers.append(nn.MaxPool2d(2))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.out_channels = cin
        for conv in self.modules():
            if isinstance(conv, nn.Conv2d):  # torchvision's VGG init: a plain ReLU stack trains
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return x


def fully_connected_head(in_features: int, num_classes: int, width: float,
                         dropout: float) -> nn.Sequential:
    """VGG's fc6-fc8: FC 4096 - ReLU - dropout - FC 4096 - ReLU - dropout - FC K, at `width`.

    Initialised as torchvision's VGG (normal, std 0.01, zero bias), as Caffe's VGG-Face fc8
    was: PyTorch's default draws these layers several times larger.
    """
    hidden = scaled_channels(4096, width)
    head = nn.Sequential(
        nn.Linear(in_features, hidden), nn.ReLU(True), nn.Dropout(dropout),
        nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(dropout),
        nn.Linear(hidden, num_classes))
    for layer in head:
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, 0, 0.01)
            nn.init.zeros_(layer.bias)
    return head


def load_pretrained(trunk: VGGTrunk, path_or_url: str | Path, sha256: str,
                    fully_connected: Sequence[nn.Linear] = ()) -> VGGTrunk:
    """Copy the conv (and batch-norm) weights of a VGG state dict into `trunk`, in order, and
    its first fully connected layers into `fully_connected` (DAM-CNN keeps VGG-Face's fc6
    and fc7); the file's other fully connected layers are ignored.

    Any state dict whose conv layers come in VGG order fits (torchvision's `vgg16-*.pth`,
    a converted VGG-Face file with fc6-fc8 as 2D linear weights). Every shape is checked
    before anything is copied. A 3-channel first conv loaded into a 1-channel trunk is
    averaged over RGB, so the grayscale face sees the mean of the colour filters.
    """
    state = torch.load(weights_file(path_or_url, sha256), map_location="cpu", weights_only=True)
    layers = [layer for layer in layers_by_module(state.get("state_dict", state))
              if layer.get("weight") is not None]
    convs = [layer for layer in layers if layer["weight"].dim() == 4 or "running_mean" in layer]
    linears = [layer for layer in layers if layer["weight"].dim() == 2]
    target = [m for m in trunk.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    if len(convs) != len(target):
        raise ValueError(f"{path_or_url} has {len(convs)} conv/batch-norm layers, "
                         f"the {trunk.layout} trunk {len(target)}")
    if len(linears) < len(fully_connected):
        raise ValueError(f"{path_or_url} has {len(linears)} fully connected layers, "
                         f"{len(fully_connected)} are to be loaded")
    copies = [copy for index, (tensors, module) in enumerate(zip(convs, target))
              for copy in _copies(tensors, module, f"layer {index}", path_or_url,
                                  average_rgb=index == 0)]
    copies += [copy for index, (tensors, module) in enumerate(zip(linears, fully_connected))
               for copy in _copies(tensors, module, f"fully connected layer {index}",
                                   path_or_url)]
    with torch.no_grad():
        for own, value in copies:
            own.copy_(value)
    return trunk


def _copies(tensors: dict, module: nn.Module, label: str, source,
            average_rgb: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(own tensor, file tensor) pairs of one layer, every shape checked."""
    copies = []
    for name, own in module.state_dict().items():
        if name == "num_batches_tracked":
            continue
        if name not in tensors:
            raise ValueError(f"{label} of {source} lacks {name!r} "
                             f"(a {type(module).__name__} needs it)")
        value = tensors[name]
        if average_rgb and name == "weight" and value.shape[1] == 3 and own.shape[1] == 1:
            value = value.mean(dim=1, keepdim=True)
        if value.shape != own.shape:
            raise ValueError(f"{label} {name}: {source} has {tuple(value.shape)}, "
                             f"the model {tuple(own.shape)}")
        copies.append((getattr(module, name), value))
    return copies
