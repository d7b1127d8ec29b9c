"""Training: one (dataset, protocol, model, fold) job.

Determinism and resumability come from the same design: every epoch re-seeds its own RNGs
from (seed, epoch), and a checkpoint is written atomically at the end of every epoch. A job
killed mid-epoch restarts that epoch from the last checkpoint and ends with the same weights
and metrics as an uninterrupted run (on CPU).
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import re
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ferbench import recipes
from ferbench.resize import resize


def select_device(preference: str = "auto") -> torch.device:
    """CUDA when present (or asked for), else CPU; with several GPUs, one no other job holds."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("config asks for device 'cuda' but no CUDA device is available")
        count = torch.cuda.device_count()
        return torch.device("cuda", claim_gpu(count, GPU_LOCKS) if count > 1 else 0)
    return torch.device("cpu")


#: Lock files by which concurrent jobs on one machine share out its GPUs.
GPU_LOCKS = Path(tempfile.gettempdir()) / "ferbench-gpu-locks"
_held_gpu_locks: list = []  # held for the life of the process: the job keeps its GPU


def claim_gpu(count: int, lock_dir: Path) -> int:
    """Index of a GPU that no other ferbench job on this machine holds.

    Snakemake's `--resources gpu=N` caps concurrent training jobs at N but does not say which
    GPU each gets, so without this every job would train on GPU 0. Under SLURM each job sees
    only its own GPU (device_count() == 1) and this is never called. If every GPU is held
    (jobs started without the cap), the job shares one, chosen by its PID, and says so.
    """
    from filelock import FileLock, Timeout

    lock_dir.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        lock = FileLock(str(lock_dir / f"gpu{index}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue
        _held_gpu_locks.append(lock)
        return index
    shared = os.getpid() % count
    print(f"all {count} GPUs are held by other jobs; sharing GPU {shared}", flush=True)
    return shared


def make_deterministic(seed: int, threads: int) -> None:
    """Fix thread count and algorithms: float reductions depend on both.

    The flag is set on ATen alone: `torch.use_deterministic_algorithms` also imports
    torch._inductor (1-2 s of every training job) to set a flag that only torch.compile'd
    code reads, and ferbench compiles nothing."""
    torch.set_num_threads(max(1, threads))
    torch.manual_seed(seed)
    torch._C._set_deterministic_algorithms(True, warn_only=torch.cuda.is_available())


@dataclass
class Split:
    """Images (N, C, S, S) uint8 and integer targets, resized once to the model's input size.

    C is 1 (the face) plus the model's extra channels (inputs.stack_channels). `groups`, when
    known, is each face's gender index (-1: unknown), for DAM-CNN's gender-bound decoders;
    `sequences` each face's sequence index (-1: none, e.g. a DCGAN face), shared by the
    frames of one sequence and the augmented copies of one face, so DAM-CNN's decoders can
    be given a target that is another variation, not another copy of the same face."""

    images: torch.Tensor
    targets: torch.Tensor
    groups: torch.Tensor | None = None
    sequences: torch.Tensor | None = None

    @classmethod
    def from_arrays(cls, faces: np.ndarray, targets, input_size: int, groups=None,
                    sequences=None) -> "Split":
        """`faces` is (N, S, S) or (N, C, S, S) uint8, resized by ferbench.resize."""
        faces = faces[:, None] if faces.ndim == 3 else faces
        if len(faces) and faces.shape[-1] != input_size:
            faces = np.stack([[resize(channel, input_size) for channel in face]
                              for face in faces])
        faces = faces.reshape(len(faces), -1, input_size, input_size)
        return cls(torch.from_numpy(np.ascontiguousarray(faces)),
                   torch.as_tensor(np.array(targets), dtype=torch.long),
                   _indices(groups), _indices(sequences))

    def __len__(self) -> int:
        return len(self.targets)


def _indices(values) -> torch.Tensor | None:
    return None if values is None else torch.as_tensor(np.array(values), dtype=torch.long)


def on_device(split: Split, device: torch.device) -> Split:
    """Where a split's batches are cut from, so the GPU never waits on the host.

    The split is one uint8 tensor already in memory, so a DataLoader's workers would only
    add copies: on CUDA the whole split moves to the GPU once when it takes under a quarter
    of the free memory (64x64 faces: 4 KiB each), else it is pinned so that each batch's
    copy overlaps the previous batch's compute. On CPU it stays as it is.
    """
    if device.type != "cuda":
        return split
    free, _ = torch.cuda.mem_get_info(device)
    move = (lambda t: t.to(device)) if split.images.numel() < free // 4 else \
        (lambda t: t.pin_memory())
    return replace(split, images=move(split.images), targets=move(split.targets))


def autocast_dtype(setting: str, device: torch.device, model: torch.nn.Module
                   ) -> torch.dtype | None:
    """bfloat16 where mixed precision is safe, else None (float32).

    bfloat16 keeps float32's range, so no loss scaling is needed. `auto` uses it on CUDA GPUs
    that support it, except for models marked `full_precision` (capsule routing and squash
    act on vector lengths near the margin loss's 0.1 and 0.9, where bfloat16's 8-bit mantissa
    moves the loss); CPU stays float32, so CPU metrics are reproducible to the bit.
    `bf16` forces it (CPU included), `off` never uses it.
    """
    if setting == "off" or (setting == "auto" and getattr(model, "full_precision", False)):
        return None
    if setting == "bf16" or (device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return None


def precision(device: torch.device, dtype: torch.dtype | None):
    """The autocast context of `autocast_dtype`'s choice (nothing for float32)."""
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def gather(rows: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """`rows[idx]`, into pinned memory when `rows` is pinned.

    Indexing a pinned tensor returns a pageable one, whose `non_blocking` copy to the GPU
    is synchronous; PyTorch's caching host allocator reuses the pinned buffer once its copy
    is done."""
    if not rows.is_pinned():
        return rows[idx]
    out = torch.empty((len(idx), *rows.shape[1:]), dtype=rows.dtype, pin_memory=True)
    return torch.index_select(rows, 0, idx, out=out)


def as_input(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1] on the device."""
    return batch.to(device, non_blocking=True).float().div_(127.5).sub_(1.0)


def make_optimizer(model: torch.nn.Module, hp: dict) -> torch.optim.Optimizer:
    if hp["optimizer"] == "adam":
        return torch.optim.Adam(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    if hp["optimizer"] == "adamw":  # decoupled weight decay (Loshchilov & Hutter 2019)
        return torch.optim.AdamW(model.parameters(), lr=hp["lr"],
                                 weight_decay=hp["weight_decay"])
    if hp["optimizer"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=hp["lr"], momentum=hp.get("momentum", 0.9),
                               weight_decay=hp["weight_decay"])
    raise ValueError(f"unknown optimizer {hp['optimizer']!r}")


def scheduled_lr(hp: dict, epoch: int, history: list[dict] = ()) -> float:
    """lr of a (1-based) epoch under the recipe's `schedule`, after `warmup_epochs`.

    `paper`: the model's own, x `lr_decay` every `lr_step` epochs (MobileNet-CL §5), or
    constant for models without `lr_decay`. `cosine`: from lr towards 0 over the epochs after
    warmup, as torch's CosineAnnealingLR stepped once an epoch. `plateau`: x `plateau_factor`
    whenever the validation loss has not improved for more than `plateau_patience` epochs
    (torch's ReduceLROnPlateau), replayed from `history`, the rows of the epochs before
    this one. A function of the epoch and the checkpointed history alone, so a resumed run
    continues the schedule exactly.
    """
    warmup = hp.get("warmup_epochs", 0)
    if epoch <= warmup:  # linear warmup (Goyal et al. 2017), reaching lr just after it
        return hp["lr"] * epoch / (warmup + 1)
    schedule = hp.get("schedule", "paper")
    if schedule == "paper":
        if "lr_decay" not in hp:
            return hp["lr"]
        return hp["lr"] * hp["lr_decay"] ** ((epoch - 1) // hp["lr_step"])
    if schedule == "cosine":
        span = max(1, hp["epochs"] - warmup)
        return hp["lr"] * (1 + math.cos(math.pi * (epoch - warmup - 1) / span)) / 2
    if schedule == "plateau":
        return hp["lr"] * plateau_scale([row["val_loss"] for row in history[warmup:]],
                                        hp["plateau_factor"], hp["plateau_patience"])
    raise ValueError(f"unknown schedule {schedule!r} (known: {', '.join(recipes.SCHEDULES)})")


def plateau_scale(val_losses: list[float], factor: float, patience: int,
                  threshold: float = 1e-4) -> float:
    """The lr factor ReduceLROnPlateau (mode min, relative threshold) reaches after these losses."""
    scale, best, bad_epochs = 1.0, math.inf, 0
    for loss in val_losses:
        if loss < best * (1 - threshold):
            best, bad_epochs = loss, 0
            continue
        bad_epochs += 1
        if bad_epochs > patience:
            scale, bad_epochs = scale * factor, 0
    return scale


def balanced_class_weights(targets: torch.Tensor) -> torch.Tensor:
    """w_c = N / (K n_c) over the K classes present (King & Zeng 2001; sklearn's "balanced").

    Every class then carries the same total weight; a class absent from the split gets 1.
    """
    counts = torch.bincount(targets.cpu()).double()
    present = counts > 0
    weights = torch.ones_like(counts)
    weights[present] = counts.sum() / (int(present.sum()) * counts[present])
    return weights.float()


def epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A CPU generator for one of an epoch's random streams, a function of (seed, epoch)."""
    state = np.random.SeedSequence([seed, epoch, stream]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def epoch_order(train: Split, hp: dict, seed: int, epoch: int) -> torch.Tensor:
    """The training split's sample order for an epoch, fixed by (seed, epoch).

    With `class_balance: sampler`, N samples drawn with replacement, each with probability
    inversely proportional to its class's count, so every class is drawn about N / K times.
    """
    balance = hp.get("class_balance", "none")
    if balance not in recipes.CLASS_BALANCES:
        raise ValueError(f"unknown class_balance {balance!r} "
                         f"(known: {', '.join(recipes.CLASS_BALANCES)})")
    if balance == "sampler" and len(train):
        targets = train.targets.cpu()
        per_sample = 1.0 / torch.bincount(targets).double()[targets]
        return torch.multinomial(per_sample, len(train), replacement=True,
                                 generator=epoch_generator(seed, epoch, 1))
    return torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + epoch))


def online_augment(x: torch.Tensor, settings: dict, generator: torch.Generator) -> torch.Tensor:
    """Random-resized crop, horizontal flip and rotation of a (B, C, S, S) batch, on its device.

    One affine warp per sample, all in one grid_sample: every channel of a sample (the face
    and its AU map) moves together. The crop keeps the face's aspect ratio, its side a
    uniform fraction in [min_crop, 1] of the face's, placed uniformly inside it; samples
    that a rotation takes past the border repeat the edge pixels. Parameters are drawn on
    the CPU from `generator`, so a batch's warps do not depend on the device.
    """
    draws = torch.rand(len(x), 5, generator=generator, dtype=torch.float64)
    scale = settings["min_crop"] + (1 - settings["min_crop"]) * draws[:, 0]
    angle = torch.deg2rad((2 * draws[:, 1] - 1) * settings["rotate_deg"])
    mirror = torch.where(draws[:, 2] < 0.5, -1.0, 1.0) if settings["flip"] else 1.0
    shift = (2 * draws[:, 3:5] - 1) * (1 - scale[:, None])
    cos, sin = scale * torch.cos(angle), scale * torch.sin(angle)
    # Output (x, y) -> input: scale * R(angle) * diag(mirror, 1) (x, y) + shift, in [-1, 1].
    theta = torch.stack([torch.stack([cos * mirror, -sin, shift[:, 0]], 1),
                         torch.stack([sin * mirror, cos, shift[:, 1]], 1)], 1)
    grid = affine_grid(theta.to(x.device, x.dtype), *x.shape[-2:])
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`F.affine_grid(theta, (B, C, H, W), align_corners=False)`, by broadcasting.

    torch's batched matmul with an inner size of 3 took half of online_augment's time on
    the CPU (as long as the bilinear sampling itself); two multiply-adds per pixel do not."""
    def centres(n: int) -> torch.Tensor:  # pixel centres in [-1, 1]
        return (torch.arange(n, dtype=theta.dtype, device=theta.device) * 2 + 1) / n - 1

    xs, ys = centres(width), centres(height)[:, None]
    rows = theta[:, :, :, None, None]  # (B, 2, 3, 1, 1): one output coordinate per row
    grid = rows[:, :, 0] * xs + rows[:, :, 1] * ys + rows[:, :, 2]  # (B, 2, H, W)
    return grid.permute(0, 2, 3, 1)


def mean_probabilities(views: list[torch.Tensor]) -> torch.Tensor:
    """The class probabilities of one face seen in several views (its scores in each): the
    mean of each view's softmax, the vote `test_flip` takes between a face and its mirror."""
    return sum(torch.softmax(scores.float(), 1) for scores in views) / len(views)


@torch.no_grad()
def predict(model: torch.nn.Module, split: Split, device: torch.device, batch_size: int = 256,
            autocast: torch.dtype | None = None, flip: bool = False):
    """Class probabilities for a split, in order.

    With `flip` (the recipe's `test_flip`), each face's probabilities are averaged with those
    of its left-right mirror, every input channel mirrored together: a face and its mirror
    show the same expression, so two views vote instead of one."""
    model.eval()
    chunks = []
    with precision(device, autocast):
        for i in range(0, len(split), batch_size):
            x = as_input(split.images[i:i + batch_size], device)
            chunks.append(mean_probabilities([model(x), model(x.flip(-1))] if flip
                                             else [model(x)]).cpu())
    return torch.cat(chunks) if chunks else torch.zeros(0)


@torch.no_grad()
def evaluate_loss(model, split: Split, device, batch_size: int = 256,
                  autocast: torch.dtype | None = None, flip: bool = False) -> tuple[float, float]:
    """Mean objective and accuracy on a split (the objective includes the model's regulariser).

    With `flip` (the recipe's `test_flip`) the accuracy is that of `predict`'s two views, so
    a model is selected as it will be tested; the objective stays the face's own view's.
    Summed on the device in float64 and read once, as in `_train_epoch`: the same sums as
    adding each batch's `.item()` on the host, without a host sync per batch."""
    model.eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    for i in range(0, len(split), batch_size):
        x = as_input(split.images[i:i + batch_size], device)
        y = split.targets[i:i + batch_size].to(device)
        with precision(device, autocast):
            loss, logits = model.objective(x, y)
            scores = mean_probabilities([logits, model(x.flip(-1))]) if flip else logits
        total_loss += loss.detach().double() * len(y)
        correct += (scores.argmax(1) == y).sum()
    seen = max(1, len(split))
    return total_loss.item() / seen, correct.item() / seen


def previous_checkpoint(checkpoint: Path) -> Path:
    """Where the checkpoint before the latest is kept (`checkpoint.prev.pt`)."""
    return checkpoint.with_name(f"{checkpoint.stem}.prev{checkpoint.suffix}")


def _save_atomic(obj, path: Path) -> None:
    """Write `path` so that a crash at any moment leaves a loadable checkpoint.

    The new file is fsynced under a temporary name before the current one becomes
    `previous_checkpoint(path)` and the new one takes its name; the folder is fsynced so the
    renames are durable too. A crash between the renames leaves only the previous one,
    which load_checkpoint falls back on."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    if path.exists():
        os.replace(path, previous_checkpoint(path))
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def remove_checkpoint(checkpoint: Path) -> None:
    """Delete a finished job's checkpoints (only unfinished jobs keep them)."""
    for path in (checkpoint, previous_checkpoint(checkpoint),
                 checkpoint.with_suffix(checkpoint.suffix + ".tmp")):
        path.unlink(missing_ok=True)


class UnsafeFileError(ValueError):
    """A torch file that holds more than tensors and plain values (lists, dicts, numbers,
    strings): unpickling such objects can run arbitrary code."""


def load_tensors(path, map_location="cpu"):
    """`torch.load` of a file ferbench wrote in another process (a model.pt, a checkpoint),
    restricted to tensors and plain values (`weights_only=True`), so that a crafted file,
    e.g. one fetched from an unauthenticated MLflow server, cannot run code."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found is None:  # not a pickle at all: damage, not a crafted object
            raise
        raise UnsafeFileError(f"refusing to load {path}: it holds more than tensors and plain "
                              f"values (global {found.group(1)}), and unpickling it could run "
                              "code") from None


def load_checkpoint(checkpoint: Path, fingerprint: str, device: torch.device):
    """The saved training state, or None when absent or written for other inputs/settings.

    A checkpoint that does not load (truncated, corrupt) is passed over for the previous
    one, and that one for a fresh start, saying so in the job's log: otherwise every retry
    would fail on the same file. One that would run code (UnsafeFileError) is not passed
    over: it was tampered with, and the user must look."""
    for path, fallback in ((checkpoint, "the previous checkpoint"),
                           (previous_checkpoint(checkpoint), "a fresh start")):
        if not path.exists():
            continue
        try:
            saved = load_tensors(path, device)
            matches = saved["state"].get("fingerprint") == fingerprint
        except UnsafeFileError:
            raise
        except Exception as err:  # torch reports damage as RuntimeError, EOFError, KeyError...
            reason = (str(err).splitlines() or [type(err).__name__])[0]
            print(f"checkpoint {path} does not load ({reason}); falling back to {fallback}",
                  flush=True)
            continue
        return saved if matches else None
    return None


#: The columns of a training history (the rows `fit` appends), for one with no epochs.
HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def fit(model: torch.nn.Module, hp: dict, train: Split, val: Split, checkpoint: Path, seed: int,
        device: torch.device, on_epoch=None, progress: bool = True, extra: dict | None = None,
        fingerprint: str = "", autocast: torch.dtype | None = None):
    """Train with model selection on the validation split only; resumes from `checkpoint`.

    A checkpoint is resumed only if its `fingerprint` (hash of inputs and hyperparameters)
    matches, so a changed config never continues a stale run. Returns (history DataFrame,
    best state_dict, best epoch, extra) where `extra` is the caller's bookkeeping dict,
    persisted in the checkpoint (e.g. the MLflow run id). With `epochs` 0 (an evaluation-only
    model) nothing trains: no epochs, and the best state is the start weights. With
    `keep_start` the start weights are epoch 0: scored on validation first, the first
    candidate every epoch must beat (its history row has no training columns).
    """
    if hp["epochs"] == 0:
        return (pd.DataFrame(columns=HISTORY_COLUMNS), _cpu_state(model), 0,
                dict(extra or {}))
    model.to(device)
    model.set_loss_recipe(hp.get("label_smoothing", 0.0),
                          balanced_class_weights(train.targets)
                          if hp.get("class_balance") == "loss" else None)
    train, val = on_device(train, device), on_device(val, device)
    optimizer = make_optimizer(model, hp)
    state = {"epoch": 0, "history": [], "best_state": None, "best_key": None, "best_epoch": 0,
             "since_best": 0, "extra": dict(extra or {}), "fingerprint": fingerprint}
    saved = load_checkpoint(checkpoint, fingerprint, device)
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state = saved["state"]
        # The job's log says so: after a kill, the epochs before this one are not retrained.
        print(f"resumed from epoch {state['epoch']} of {hp['epochs']} ({checkpoint})",
              flush=True)
    model.prepare(train.images, train.targets, train.groups,  # after a resume too: not saved
                  train.sequences)

    def validate() -> tuple[float, float]:
        return evaluate_loss(model, val, device, autocast=autocast,
                             flip=hp.get("test_flip", False))

    def select(epoch: int, val_loss: float, val_acc: float) -> None:
        """Keep the weights if they beat every earlier candidate on validation."""
        key = (val_acc, -val_loss)
        if state["best_key"] is None or key > state["best_key"]:
            state.update(best_key=key, best_epoch=epoch, since_best=0,
                         best_state=_cpu_state(model))
        else:
            state["since_best"] += 1

    if hp.get("keep_start") and state["best_key"] is None:
        start = time.perf_counter()
        val_loss, val_acc = validate()
        state["start_row"] = {"epoch": 0, "val_loss": val_loss, "val_acc": val_acc,
                              "seconds": round(time.perf_counter() - start, 3)}
        select(0, val_loss, val_acc)
        if on_epoch:
            on_epoch(state["start_row"], state["extra"])
    bar = tqdm(total=hp["epochs"], initial=state["epoch"], desc="epochs", unit="ep",
               disable=not progress)
    while state["epoch"] < hp["epochs"] and state["since_best"] < hp["patience"]:
        epoch = state["epoch"] + 1
        start = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = scheduled_lr(hp, epoch, state["history"])
        train_loss, train_acc = _train_epoch(model, optimizer, hp, train, device, seed, epoch,
                                             autocast)
        val_loss, val_acc = validate()
        row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
               "val_loss": val_loss, "val_acc": val_acc, "lr": optimizer.param_groups[0]["lr"],
               "seconds": round(time.perf_counter() - start, 3)}
        state["history"].append(row)
        select(epoch, val_loss, val_acc)
        state["epoch"] = epoch
        if on_epoch:  # before the checkpoint: a kill in between re-logs the same values
            on_epoch(row, state["extra"])
        _save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "state": state}, checkpoint)
        bar.update(1)
        bar.set_postfix(val_acc=f"{val_acc:.3f}", loss=f"{train_loss:.3f}")
    bar.close()
    rows = [state["start_row"]] if "start_row" in state else []
    history = pd.DataFrame(rows + state["history"], columns=list(HISTORY_COLUMNS))
    return history, state["best_state"], state["best_epoch"], state["extra"]


def fit_closed_form(model: torch.nn.Module, train: Split, val: Split, seed: int,
                    on_epoch=None, extra: dict | None = None, flip: bool = False,
                    held_out=()):
    """`fit` for a model fitted in one step (the HOG + SVM baseline, the linear probe): each
    candidate it tries on the validation split (and the inner folds `held_out` of the
    training faces, splits.subject_folds) is one row of its history, logged like an epoch;
    with `flip` each scored face is scored with its mirror, as `predict` tests.
    Returns (history, state_dict, the chosen row's epoch); nothing to resume."""
    cpu = torch.device("cpu")
    history = model.fit_closed_form(as_input(train.images, cpu), train.targets.numpy(),
                                    as_input(val.images, cpu), val.targets.numpy(), seed, flip,
                                    held_out)
    for row in history.drop(columns="chosen").to_dict("records"):
        if on_epoch:
            on_epoch(row, extra or {})
    best_epoch = int(history.loc[history["chosen"], "epoch"].iloc[0])
    return history, {k: v.detach().clone() for k, v in model.state_dict().items()}, best_epoch


def _train_epoch(model, optimizer, hp, train: Split, device, seed: int, epoch: int,
                 autocast: torch.dtype | None = None):
    """One pass in an order, with dropout masks and online augmentation fixed by (seed, epoch).

    Loss and accuracy are summed on the device and read once at the end: a per-batch
    `.item()` would make the host wait for the GPU at every step."""
    model.train()
    torch.manual_seed(seed * 100_003 + epoch)
    order = epoch_order(train, hp, seed, epoch).to(train.images.device)
    augment = recipes.online_augment_settings(hp.get("online_augment", False))
    augment_draws = epoch_generator(seed, epoch, 2)
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    batch_size = hp["batch_size"]
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        x = as_input(gather(train.images, idx), device)
        if augment:
            x = online_augment(x, augment, augment_draws)
        y = gather(train.targets, idx).to(device, non_blocking=True)
        with precision(device, autocast):
            loss, logits = model.training_objective(x, y, idx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.detach().float() * len(y)
        correct += (logits.argmax(1) == y).sum()
    seen = max(1, len(order))
    return total_loss.item() / seen, correct.item() / seen


def class_index(labels) -> dict[str, int]:
    return {label: i for i, label in enumerate(labels)}

