"""MobileNet-CL (Miao et al. 2019), read beside `papers/mobilenet-center-loss-realtime-fer.txt`.

Backbone (§3.2.1): MobileNetV1 (Howard et al. 2017, Table 1) in plain torch: a standard 3x3
conv, then 13 depthwise-separable blocks (3x3 depthwise + BN + ReLU, 1x1 pointwise + BN +
ReLU), channels 32-64-128-128-256-256-512x6-1024-1024 scaled by `width` (at least 8 each, as
in TF-slim's `min_depth`). Then global average pooling, dropout 0.5 "after the Avg Pool layer
and before the final fully connected layer" (§5) and an FC layer to K classes.

48x48 grayscale input (§3.1.3): only the first conv changes, to one input channel. Every
stride of Howard's network is kept (first conv and blocks 2, 4, 6 and 12 stride 2): with
padding 1 each halves the side rounding up, 48 -> 24 -> 12 -> 6 -> 3 -> 2, so the last two
blocks see a 2x2 map, the size the paper's TF-slim MobileNetV1 ('SAME' padding) gives at 48x48.
No stride is changed: the map never shrinks below 1x1, and removing a stride would quadruple
the cost of every layer after it and move ImageNet weights away from the receptive fields they
were trained for, for no gain the paper reports.

Loss (Eq. 3): softmax loss + lambda * center loss (Eq. 1) on the pooled features, the class
centres updated by Eq. 2 (Wen et al. 2016) with rate alpha; lambda = alpha = 0.001 (§5.1.2).
The centres are a buffer, not a parameter: the optimizer never touches them, they only move
in training mode, and they are saved with the weights, so a resumed run continues exactly.

Two-stage fine-tuning (§3.2.2): `init_from` names the weights a run starts from, either a
`model.pt` written by ferbench (stage 2 starts from the FER2013 stage), or ImageNet
MobileNetV1 weights (a path or URL checked against `init_sha256`), loaded after building by
`ModelSpec.load_start`. Only the conv/BN backbone
is transferred; the classifier and centres are always new ("the last fully connected layers
are both replaced"). A layer whose shape differs (an RGB first conv, which the paper
re-initialises) keeps its initialisation and is listed in the job's log.

Optimisation (§5): SGD momentum 0.9, weight decay 4e-5, batch 64, lr x 0.94 every 15 epochs
(`lr_decay`, `lr_step`, applied by train.fit). The initial lr is stage 1's (FER2013): 0.01 as
§5 and the SPEC say (§3.2.2 says 0.001). Stage 2 (CK+, JAFFE) uses 0.045: set `lr: 0.045` in
that study's model config. The paper gives no epoch count; 60 epochs (four lr levels) with
early stopping after 15 epochs without improvement is ours.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ferbench.models.base import FERModel
from ferbench.models.losses import center_loss, update_centres
from ferbench.models.pretrained import layers_by_module, weights_file

DEFAULTS = {
    "optimizer": "sgd",
    "lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 4e-5,
    "lr_decay": 0.94,
    "lr_step": 15,
    "batch_size": 64,
    "epochs": 60,
    "patience": 15,
    "dropout": 0.5,
    "center_lambda": 0.001,
    "center_alpha": 0.001,
    "width": 1.0,
    "input_size": 48,
    "init_from": "",
    "init_sha256": "",
}

#: (output channels, stride) of the 13 depthwise-separable blocks (Howard et al. Table 1).
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
          *[(512, 1)] * 5, (1024, 2), (1024, 1))
STEM_CHANNELS = 32


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _depthwise_separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    """3x3 depthwise (one filter per channel) then 1x1 pointwise, each with BN and ReLU."""
    return nn.Sequential(_conv_bn_relu(cin, cin, 3, stride, groups=cin),
                         _conv_bn_relu(cin, cout, 1))


class MobileNetCL(FERModel):
    def __init__(self, num_classes: int, dropout: float = 0.5, center_lambda: float = 0.001,
                 center_alpha: float = 0.001, width: float = 1.0):
        super().__init__()
        self.center_lambda = center_lambda
        self.center_alpha = center_alpha
        scaled = [max(8, int(c * width)) for c in (STEM_CHANNELS, *(c for c, _ in BLOCKS))]
        layers = [_conv_bn_relu(1, scaled[0], 3, stride=2)]
        layers += [_depthwise_separable(cin, cout, stride)
                   for cin, cout, (_, stride) in zip(scaled, scaled[1:], BLOCKS)]
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(scaled[-1], num_classes)
        self.register_buffer("centres", torch.zeros(num_classes, scaled[-1]))
        self._initialise()

    def _initialise(self) -> None:
        """Gaussian conv weights (the paper re-initialises the first conv "from a Gaussian")."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled deep features x_i of Eq. 1 (Fig. 2: after 'Avg Pool', before dropout)."""
        return self.features(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.embed(x)))

    def objective(self, x, targets):
        """L = L_S + lambda * L_CL (Eq. 3); in training mode the centres then move by Eq. 2.

        Eq. 3 sums over the mini-batch; both terms are averaged here instead (as in Wen et
        al.'s and TF's implementations), which keeps their ratio lambda and scales the
        gradient by 1/N, the scale the paper's learning rates were tuned for.
        """
        features = self.embed(x)
        logits = self.classifier(self.dropout(features))
        loss = (self.classification_loss(logits, targets)
                + self.center_lambda * center_loss(features, targets, self.centres))
        if self.training:
            self.centres.copy_(update_centres(features, targets, self.centres, self.center_alpha))
        return loss, logits

    def load_start_weights(self, init_from: str, init_sha256: str = "") -> list[str]:
        """`init_from`: copy conv/BN weights from a checkpoint, layer by layer in network order.

        Returns (and prints, for the job's log) the layers left at their initialisation
        because their shapes differ. Names are not compared: ImageNet MobileNetV1 ports name
        their layers in many ways, but a PyTorch state dict lists the 27 convs and their BNs
        in network order; a count or shape that does not fit is refused or listed.
        """
        state = torch.load(_weights_file(init_from, init_sha256), map_location="cpu",
                           weights_only=True)
        state = state.get("state_dict", state)
        source = [tensors for tensors in layers_by_module(state)
                  if "running_mean" in tensors or getattr(tensors.get("weight"), "ndim", 0) == 4]
        target = [(name, module) for name, module in self.features.named_modules()
                  if isinstance(module, (nn.Conv2d, nn.BatchNorm2d))]
        if len(source) != len(target):
            raise ValueError(f"init_from {init_from} has {len(source)} conv/batch-norm layers, "
                             f"mobilenet_cl has {len(target)}: not a MobileNetV1 checkpoint")
        kept, copied = [], 0
        with torch.no_grad():
            for tensors, (name, module) in zip(source, target):
                for key, own in module.state_dict(keep_vars=True).items():
                    if key == "num_batches_tracked":  # a counter, not a weight
                        continue
                    value = tensors.get(key)
                    if value is None or value.shape != own.shape:
                        found = "missing" if value is None else tuple(value.shape)
                        kept.append(f"features.{name}.{key}: {found} in checkpoint, "
                                    f"{tuple(own.shape)} here")
                    else:
                        own.copy_(value)
                        copied += 1
        if not copied:
            raise ValueError(f"no layer of init_from {init_from} fits mobilenet_cl "
                             f"(a different width?)")
        print(f"mobilenet_cl: backbone initialised from {init_from}; classifier and centres "
              f"are new; {len(kept)} tensor(s) kept their initialisation"
              + "".join(f"\n  {line}" for line in kept), flush=True)
        return kept

    def representations(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The pooled features the center loss pulls to their class centres (Eq. 1)."""
        return {"pooled": self.embed(x)}


def _weights_file(init_from: str, init_sha256: str) -> Path:
    """ImageNet weights are checked against their sha256 (URLs fetched and cached); a ferbench
    checkpoint is a workflow output, trusted as a local path."""
    if init_sha256:
        return weights_file(init_from, init_sha256)
    path = Path(init_from).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"init_from {init_from} is not a file (a URL needs init_sha256)")
    return path
