"""DAM-CNN (Xie, Hu & Wu 2019), read beside `papers/dam-cnn-serd-mpvs.txt`.

VGG-Face conv trunk (VGG16 layout, Table 1) -> SERD, an attentive mask over the last pooled
feature map (Eq. 1-3) -> MPVS-Net, a multi-path autoencoder whose code feeds two FC layers
(Eq. 6-11). The paper trains in two steps (Algorithm 1), registered as two models so the
workflow runs them as two jobs joined by a DAG edge (`ModelSpec.starts_from`):

1. `vgg_serd`: trunk + SERD + VGG's FC classifier (last layer re-initialised for K classes),
   fine-tuned on Eq. 4 = cross-entropy + L_reg. The paper reports it on its own too.
2. `damcnn`: the trunk and SERD come from the same fold's `vgg_serd` `model.pt` (`init_from`,
   filled in by the workflow) and are frozen; the FC classifier is replaced by MPVS-Net,
   trained on Eq. 11 (sum of reconstruction losses + lambda x cross-entropy) with the FC
   layers on cross-entropy alone (Eq. 10).

VGG-Face weights (`pretrained`, a path or URL checked against `pretrained_sha256`) start
step 1: its conv trunk and fc6, fc7 are loaded and only fc8 is new, sized for the K classes
("we reshape and reinitialize the last fully-connected layer", Section 3.1); without them
step 1 starts from random init. Step 2 takes all of its trunk and SERD from `init_from`.
Both are loaded after building (`load_start_weights`, called by ModelSpec.load_start), so a
trained model is rebuilt from its own state dict without them.

Decisions where the paper is silent: it names learning rates only (alpha_S = 1e-5 for
VGG-SERD, alpha_M = alpha_fc = 1e-4 for MPVS-Net), so DEFAULTS take SGD with momentum 0.9 (the
usual fine-tuning of a Caffe-era VGG), batch 32, and up to 50 epochs with early stopping on
the validation split for "until the loss converges". `lr` is step 1's 1e-5 for `vgg_serd`
and 1e-4 for `damcnn`. Dropout 0.5 acts on the MPAE code and after every hidden FC layer.
`width` scales the trunk's channels and the 4096-wide layers alike, and the flattened feature
size (512 x 7 x 7 = 25088 at 224) follows from `input_size` and `width`, so tests run tiny.

Decoder targets (Section 3.3.1 and the text after Algorithm 1): each training sample s_i
gets, for each decoder j, one target s_i^j of its class, drawn once before step 2 and kept
for the whole training (the paper stores the pairs (s_i, s_i^j)). The target must share only the expression, so it is
never the sample itself nor any face of the sample's sequence (its other frames, and every
augmented copy of it: the workflow passes each face's sequence as `prepare`'s sequences).
A class whose faces all come from one sequence has no such target: its faces fall back to
another face of their sequence (or, alone in their class, to themselves), and the job's log
says how many did. The draw is seeded by the run's seed (torch.initial_seed(), which
train.make_deterministic sets), so a resumed run fixes the same pairs. Validation faces are
not in the prepared split: their targets are drawn per batch among all training faces of
their class, from the RNG the training loop re-seeds every epoch.

Gender-bound decoders (`gender_bound`, the paper's DAM-CNN-g, Section 4.3.2, where N = 2
decoders each reconstruct a same-class sample of one gender): decoder j draws from gender
j mod G among the training samples of the class, so variations other than gender are
suppressed while the code keeps what tells the genders apart. The workflow passes each
training sample's gender as `prepare`'s groups; a class with no sample of that gender (outside
the sample's sequence) falls back to the whole class. Samples without a gender (DCGAN faces)
are never drawn for a gender.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ferbench.models.base import FERModel
from ferbench.models.losses import mpae_reconstruction, serd_regulariser
from ferbench.models.vgg import (TRUNK_DEFAULTS, VGGTrunk, fully_connected_head,
                                 load_pretrained, scaled_channels)

#: Step 1, VGG-SERD (Eq. 4): alpha_S = 1e-5.
VGG_SERD_DEFAULTS = {
    "pretrained": "",
    "pretrained_sha256": "",
    "optimizer": "sgd",
    "momentum": 0.9,
    "lr": 1e-5,
    "weight_decay": 0.0,
    "batch_size": 32,
    "epochs": 50,
    "patience": 10,
    "dropout": 0.5,
    "gamma1": 1e-3,
    "gamma2": 1e-4,
    "width": 1.0,
    "input_size": 224,
    **TRUNK_DEFAULTS,  # batch norm, ours: for a trunk trained from scratch at CPU sizes
}
#: Step 2, MPVS-Net (Eq. 11): alpha_M = alpha_fc = 1e-4, N = 5 decoders, lambda = 20.
DEFAULTS = {
    **{k: v for k, v in VGG_SERD_DEFAULTS.items() if not k.startswith("pretrained")},
    "lr": 1e-4,
    "init_from": "",
    "decoders": 5,
    "lambda_ce": 20.0,
    "gender_bound": False,
}

#: What step 2 takes from step 1's recipe (ModelSpec.shares): it loads step 1's trunk and
#: SERD, so it builds them as step 1 did.
TRUNK_KEYS = ("width", "input_size", "batch_norm")

#: Images per trunk pass when `prepare` caches the training split's salient features.
PREPARE_BATCH = 64


class SERD(nn.Module):
    """Salient Expressional Region Descriptor: which positions of the feature map matter.

    M = tanh(W_a * h_c + B_a) with a 1x1 kernel over all channels (Eq. 1), so each weight
    judges one image region; h_s = ReLU(M . h_c) (Eq. 2) drops regions with negative weight.

    The paper does not say how W_a starts. PyTorch's default can make M negative at every
    region of every face (h_c >= 0 after ReLU and pooling), so h_s = 0 and no gradient ever
    reaches anything: here W_a starts at 0 and B_a at 1, a mask of tanh(1) = 0.76 over the
    whole face that training (and Eq. 3's regulariser) then shapes.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.attention = nn.Conv2d(channels, 1, kernel_size=1)
        nn.init.zeros_(self.attention.weight)
        nn.init.ones_(self.attention.bias)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(salient features h_s, mask M) of trunk features h_c."""
        mask = torch.tanh(self.attention(features))
        return torch.relu(mask * features), mask


class MPVSNet(nn.Module):
    """Multi-Path Variation-Suppressing Network: MPAE encoder + N decoders, then two FC layers.

    The encoder's code h = sig(W_E s + B_E) (Eq. 6) must let every decoder
    s_hat^j = sig(V^j h + B_D^j) (Eq. 7) rebuild a *different* sample of the same class, so it
    keeps the expression and drops the variations; it also feeds FC-ReLU-FC for the scores.
    """

    def __init__(self, features: int, hidden: int, decoders: int, num_classes: int,
                 dropout: float):
        super().__init__()
        self.encoder = nn.Linear(features, hidden)
        self.decoders = nn.ModuleList(nn.Linear(hidden, features) for _ in range(decoders))
        self.fc = nn.Linear(hidden, hidden)
        self.classifier = nn.Linear(hidden, num_classes)
        self.dropout = nn.Dropout(dropout)

    def encode(self, salient: torch.Tensor) -> torch.Tensor:
        """Eq. 6 on flattened salient features (B, D) -> code (B, hidden)."""
        return self.dropout(torch.sigmoid(self.encoder(salient)))

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        """Eq. 7 for every decoder: (N, B, D)."""
        return torch.stack([torch.sigmoid(decoder(code)) for decoder in self.decoders])

    def classify(self, code: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(torch.relu(self.fc(code))))


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by `factor`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.factor, None


def _draw(sample_keys: torch.Tensor, sample_exclusions: torch.Tensor, query_keys: torch.Tensor,
          query_exclusions: torch.Tensor, uniform: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, found): for each query, a sample whose key is the query's and whose exclusion
    value differs from the query's, picked by `uniform` in [0, 1); `found` is False where no
    sample qualifies. Exclusion values are >= 0; a query's -1 excludes nothing.

    Samples are sorted by (key, exclusion), so a query's candidates are its key's run minus
    the block of its exclusion value, and the pick skips that block.
    """
    span = int(sample_exclusions.max()) + 2  # value span - 1 is no sample's: what -1 excludes
    ordered, order = torch.sort(sample_keys * span + sample_exclusions, stable=True)
    base = query_keys * span
    start, end = torch.searchsorted(ordered, base), torch.searchsorted(ordered, base + span)
    excluded = base + torch.where(query_exclusions >= 0, query_exclusions, span - 1)
    low = torch.searchsorted(ordered, excluded)
    skipped = torch.searchsorted(ordered, excluded, right=True) - low
    available = end - start - skipped
    position = start + torch.minimum((uniform * available).long(), (available - 1).clamp(min=0))
    position = torch.where(position >= low, position + skipped, position)
    return order[position.clamp(max=len(order) - 1)], available > 0


def _first_drawn(levels, uniform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, level): each query's draw from the first of `levels` (arguments of `_draw`,
    most demanding first) that has a candidate, and that level's index (len(levels): none)."""
    drawn = torch.zeros(uniform.shape, dtype=torch.long)
    level = torch.full(uniform.shape, len(levels))
    for index, arguments in enumerate(levels):
        indices, found = _draw(*arguments, uniform)
        take = found & (level == len(levels))
        drawn, level = torch.where(take, indices, drawn), torch.where(take, index, level)
    return drawn, level


class DAMCNN(FERModel):
    def __init__(self, num_classes: int, step: int = 1, decoders: int = 5,
                 lambda_ce: float = 20.0, gamma1: float = 1e-3, gamma2: float = 1e-4,
                 dropout: float = 0.5, width: float = 1.0, input_size: int = 224,
                 gender_bound: bool = False, batch_norm: bool = False):
        super().__init__()
        if step not in (1, 2):
            raise ValueError(f"damcnn step must be 1 (VGG-SERD) or 2 (MPVS-Net), got {step!r}")
        if input_size % 32:
            raise ValueError(f"damcnn needs an input size divisible by 32 (five 2x2 pools), "
                             f"got {input_size}")
        if decoders < 1:
            raise ValueError(f"MPVS-Net needs at least one decoder, got {decoders}")
        self.step, self.num_classes, self.gender_bound = step, num_classes, gender_bound
        self.lambda_ce, self.gamma1, self.gamma2 = lambda_ce, gamma1, gamma2
        self.trunk = VGGTrunk("vgg16", in_channels=1, width=width, batch_norm=batch_norm)
        self.serd = SERD(self.trunk.out_channels)
        features = self.trunk.out_channels * (input_size // 32) ** 2
        if step == 1:
            # VGG-Face's fc6-fc8, the last one sized for the K expressions.
            self.head = fully_connected_head(features, num_classes, width, dropout)
        else:
            self.mpvs = MPVSNet(features, scaled_channels(4096, width), decoders, num_classes,
                                dropout)
            for frozen in (self.trunk, self.serd):
                frozen.requires_grad_(False)
        self._loaded_step1 = False
        self._target_features: torch.Tensor | None = None
        self._fixed_targets: torch.Tensor | None = None
        self.train()  # step 2: the frozen parts start in eval mode

    def train(self, mode: bool = True) -> DAMCNN:
        """Step 2 keeps the frozen trunk and SERD in eval mode whatever `mode`: a batch-norm
        trunk's running statistics are part of what step 1 learnt, and training batches
        must not move them (nor make its features differ from the ones `prepare` cached)."""
        super().train(mode)
        if self.step == 2:
            self.trunk.eval()
            self.serd.eval()
        return self

    def load_start_weights(self, path: str, sha256: str = "") -> None:
        """Step 1: VGG-Face's conv trunk, fc6 and fc7 (fc8 stays new). Step 2: the trunk and
        SERD of the fold's step-1 `model.pt` (`init_from`)."""
        if self.step == 1:
            load_pretrained(self.trunk, path, sha256, fully_connected=(self.head[0], self.head[3]))
        else:
            self._load_vgg_serd(path)
            self._loaded_step1 = True

    def _load_vgg_serd(self, path: str) -> None:
        """Trunk and SERD weights from a step-1 `model.pt` (jobs.train_fold's format)."""
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("model") != "vgg_serd":
            raise ValueError(f"{path} is not a vgg_serd model (DAM-CNN's step 1)")
        for name in ("trunk", "serd"):
            prefix = f"{name}."
            getattr(self, name).load_state_dict(
                {key[len(prefix):]: value for key, value in saved["state_dict"].items()
                 if key.startswith(prefix)})

    def salient_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h_s flattened to (B, D), mask M (B, 1, s, s)): the trunk and SERD (Eq. 1-2)."""
        salient, mask = self.serd(self.trunk(x))
        return salient.flatten(1), mask

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """SERD's mask resized bilinearly to the input, as the paper's heatmaps (Fig. 8)."""
        _, mask = self.salient_features(x)
        return F.interpolate(mask, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        salient, _ = self.salient_features(x)
        if self.step == 1:
            return self.head(salient)
        return self.mpvs.classify(self.mpvs.encode(salient))

    def objective(self, x: torch.Tensor, targets: torch.Tensor):
        """Step 1: Eq. 4. Step 2: Eq. 11 for the MPAE and Eq. 10 for the FC layers, against
        targets drawn for this batch (validation faces are not in the prepared split)."""
        return self._objective(x, targets, None)

    def training_objective(self, x: torch.Tensor, targets: torch.Tensor, samples: torch.Tensor):
        """`objective` against the targets fixed for these training samples in `prepare`."""
        return self._objective(x, targets, samples)

    def _objective(self, x: torch.Tensor, targets: torch.Tensor, samples: torch.Tensor | None):
        salient, mask = self.salient_features(x)
        if self.step == 1:
            logits = self.head(salient)
            loss = self.classification_loss(logits, targets) + serd_regulariser(mask, self.gamma1,
                                                                       self.gamma2)
            return loss, logits
        code = self.mpvs.encode(salient)
        # The code passes lambda x the cross-entropy's gradient back to the MPAE (Eq. 11)
        # while the FC layers learn from the plain cross-entropy (Eq. 10).
        logits = self.mpvs.classify(_ScaleGradient.apply(code, self.lambda_ce))
        cross_entropy = self.classification_loss(logits, targets)
        wanted = (self.reconstruction_targets(targets) if samples is None
                  else self._target_features[self.fixed_targets(samples)])
        reconstruction = mpae_reconstruction(self.mpvs.decode(code), wanted.to(code.device))
        # Reported value: Eq. 11's J_all + lambda L_ce; the detached part adds no gradient.
        loss = reconstruction + cross_entropy + (self.lambda_ce - 1) * cross_entropy.detach()
        return loss, logits

    def prepare(self, images: torch.Tensor, targets: torch.Tensor,
                groups: torch.Tensor | None = None,
                sequences: torch.Tensor | None = None) -> None:
        """Step 2: cache every training sample's salient features and fix its decoder targets.

        Trunk and SERD are frozen, so the features are the decoders' fixed targets s_i^j. They
        stay on the CPU (N x D floats) and are not saved. `groups` is each sample's gender
        index (-1: none), needed when `gender_bound`; `sequences` each sample's sequence
        (-1: none; without them each sample is its own sequence).
        """
        if self.step == 1:
            return
        if not self._loaded_step1:
            raise ValueError("damcnn trains MPVS-Net on the frozen VGG-SERD of step 1: "
                             "set init_from to a vgg_serd model.pt")
        if self.gender_bound and groups is None:
            raise ValueError("damcnn gender_bound needs each training face's gender: the "
                             "dataset has no gender column")
        from ferbench.train import as_input  # train imports the model registry

        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        with torch.no_grad():
            self._target_features = torch.cat([
                self.salient_features(as_input(images[start:start + PREPARE_BATCH], device))[0]
                .cpu() for start in range(0, len(images), PREPARE_BATCH)])
        self.train(was_training)
        self._labels = targets.cpu()
        self._genders = groups.cpu() if self.gender_bound else None
        self._fix_targets(sequences)

    def _fix_targets(self, sequences: torch.Tensor | None) -> None:
        """Draw each training sample's N targets once, outside its sequence where possible."""
        count = len(self._labels)
        own = torch.arange(count)
        if sequences is None:
            sequences = own
        else:  # faces without a sequence are each their own; then number them 0, 1, ...
            sequences = sequences.cpu()
            sequences = torch.where(sequences >= 0, sequences, sequences.max() + 1 + own)
            sequences = torch.unique(sequences, return_inverse=True)[1]
        generator = torch.Generator().manual_seed(torch.initial_seed())
        uniform = torch.rand(len(self.mpvs.decoders), count, generator=generator)
        labels = self._labels.expand_as(uniform)
        outside = [(sequences, sequences.expand_as(uniform))]
        levels = [*self._levels(labels, outside),
                  (self._labels, own, labels, own.expand_as(uniform)),    # not itself
                  (self._labels, own, labels, torch.full_like(labels, -1))]  # alone: itself
        self._fixed_targets, level = _first_drawn(levels, uniform)
        inside = (level >= len(levels) - 2).any(0)
        if inside.any():
            print(f"damcnn: {int(inside.sum())} of {count} training faces have no same-class "
                  f"face outside their own sequence to reconstruct; they reconstruct another "
                  f"face of it (or, alone in their class, themselves)", flush=True)

    def _levels(self, labels: torch.Tensor, exclusions: list) -> list:
        """`_draw` arguments for the class's samples of decoder j's gender (when
        `gender_bound`), then for all of the class's samples, under each exclusion."""
        gender_keys = []
        if self.gender_bound:
            genders = int(self._genders.max()) + 1
            # Key (class, gender) = class * G + gender; samples without a gender go last.
            own_keys = torch.where(self._genders >= 0, self._labels * genders + self._genders,
                                   self.num_classes * genders)
            decoder_gender = torch.arange(len(self.mpvs.decoders))[:, None] % genders
            gender_keys = [(own_keys, labels * genders + decoder_gender)]
        return [(sample_keys, sample_exclusions, query_keys, query_exclusions)
                for sample_keys, query_keys in [*gender_keys, (self._labels, labels)]
                for sample_exclusions, query_exclusions in exclusions]

    def fixed_targets(self, samples: torch.Tensor) -> torch.Tensor:
        """(N, B) indices into the prepared split: decoder j's fixed target for each sample."""
        if self._fixed_targets is None:
            raise RuntimeError("damcnn step 2 needs prepare(train images, targets) before "
                               "its objective (train.fit calls it)")
        return self._fixed_targets[:, samples.cpu()]

    def reconstruction_targets(self, labels: torch.Tensor) -> torch.Tensor:
        """(N, B) cached salient features s_i^j the decoders must rebuild (Eq. 8) for faces
        outside the prepared split, drawn by `same_class_samples`."""
        return self._target_features[self.same_class_samples(labels)]

    def same_class_samples(self, labels: torch.Tensor) -> torch.Tensor:
        """(N, B) indices into the prepared split, drawn for faces outside it (validation).

        Uniform over the training samples of the sample's class (of decoder j's gender when
        `gender_bound`). A generator seeded from the global RNG makes the draw
        device-independent; the training loop re-seeds that RNG every epoch.
        """
        if self._target_features is None:
            raise RuntimeError("damcnn step 2 needs prepare(train images, targets) before "
                               "its objective (train.fit calls it)")
        labels = labels.cpu()
        sizes = torch.bincount(self._labels, minlength=self.num_classes)
        if (sizes[labels] == 0).any():
            missing = sorted(set(labels[sizes[labels] == 0].tolist()))
            raise ValueError(f"no training sample of class {missing} to reconstruct")
        generator = torch.Generator().manual_seed(int(torch.randint(2 ** 62, ())))
        uniform = torch.rand(len(self.mpvs.decoders), len(labels), generator=generator)
        labels = labels.expand_as(uniform)
        anything = [(torch.zeros_like(self._labels), torch.full_like(labels, -1))]
        return _first_drawn(self._levels(labels, anything), uniform)[0]

    def attention_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """SERD's mask M (Eq. 1) at the trunk's resolution (the caller upsamples it bilinearly,
        as the paper's Fig. 8 heatmaps), beside the gradient saliency over the face."""
        _, mask = self.salient_features(x)
        return {"serd_mask": mask[:, 0], **super().attention_maps(x)}

    def representations(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Fig. 6's R_2 (salient features h_s) and R_3: MPVS-Net's code h (Eq. 6) in step 2,
        the last hidden FC layer's output in step 1."""
        salient, _ = self.salient_features(x)
        high_level = self.mpvs.encode(salient) if self.step == 2 else self.head[:-1](salient)
        return {"salient_features": salient, "high_level": high_level}
