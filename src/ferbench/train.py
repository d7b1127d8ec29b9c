"""Training: one (dataset, protocol, model, fold) job.

Determinism and resumability come from the same design: every epoch re-seeds its own RNGs
from (seed, epoch), and a checkpoint is written atomically at the end of every epoch. A job
killed mid-epoch restarts that epoch from the last checkpoint and ends with the same weights
and metrics as an uninterrupted run (on CPU).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm



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
    """Fix thread count and algorithms: float reductions depend on both."""
    torch.set_num_threads(max(1, threads))
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())


@dataclass
class Split:
    """Images (N, C, S, S) uint8 and integer targets, resized once to the model's input size.

    C is 1 (the face) plus the model's extra channels (inputs.stack_channels). `groups`, when
    known, is each face's gender index (-1: unknown), for DAM-CNN's gender-bound decoders."""

    images: torch.Tensor
    targets: torch.Tensor
    groups: torch.Tensor | None = None

    @classmethod
    def from_arrays(cls, faces: np.ndarray, targets, input_size: int, groups=None) -> "Split":
        """`faces` is (N, S, S) or (N, C, S, S) uint8."""
        faces = faces[:, None] if faces.ndim == 3 else faces
        if len(faces) and faces.shape[-1] != input_size:
            faces = np.stack([[cv2.resize(channel, (input_size, input_size),
                                          interpolation=cv2.INTER_AREA) for channel in face]
                              for face in faces])
        faces = faces.reshape(len(faces), -1, input_size, input_size)
        return cls(torch.from_numpy(np.ascontiguousarray(faces)),
                   torch.as_tensor(np.array(targets), dtype=torch.long),
                   None if groups is None else torch.as_tensor(np.array(groups), dtype=torch.long))

    def __len__(self) -> int:
        return len(self.targets)


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
    return Split(move(split.images), move(split.targets), split.groups)


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


def as_input(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1] on the device."""
    return batch.to(device, non_blocking=True).float().div_(127.5).sub_(1.0)


def make_optimizer(model: torch.nn.Module, hp: dict) -> torch.optim.Optimizer:
    if hp["optimizer"] == "adam":
        return torch.optim.Adam(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    if hp["optimizer"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=hp["lr"], momentum=hp.get("momentum", 0.9),
                               weight_decay=hp["weight_decay"])
    raise ValueError(f"unknown optimizer {hp['optimizer']!r}")


def scheduled_lr(hp: dict, epoch: int) -> float:
    """lr of a (1-based) epoch: x `lr_decay` every `lr_step` epochs (MobileNet-CL §5).

    Models without `lr_decay` keep a constant lr. A function of the epoch alone, so a
    resumed run continues the schedule with nothing extra in the checkpoint.
    """
    if "lr_decay" not in hp:
        return hp["lr"]
    return hp["lr"] * hp["lr_decay"] ** ((epoch - 1) // hp["lr_step"])


@torch.no_grad()
def predict(model: torch.nn.Module, split: Split, device: torch.device, batch_size: int = 256,
            autocast: torch.dtype | None = None):
    """Class probabilities for a split, in order."""
    model.eval()
    with precision(device, autocast):
        chunks = [torch.softmax(model(as_input(split.images[i:i + batch_size], device)).float(),
                                1).cpu() for i in range(0, len(split), batch_size)]
    return torch.cat(chunks) if chunks else torch.zeros(0)


@torch.no_grad()
def evaluate_loss(model, split: Split, device, batch_size: int = 256,
                  autocast: torch.dtype | None = None) -> tuple[float, float]:
    """Mean objective and accuracy on a split (the objective includes the model's regulariser)."""
    model.eval()
    total_loss, correct = 0.0, 0
    for i in range(0, len(split), batch_size):
        x = as_input(split.images[i:i + batch_size], device)
        y = split.targets[i:i + batch_size].to(device)
        with precision(device, autocast):
            loss, logits = model.objective(x, y)
        total_loss += loss.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
    return total_loss / max(1, len(split)), correct / max(1, len(split))


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


def fit(model: torch.nn.Module, hp: dict, train: Split, val: Split, checkpoint: Path, seed: int,
        device: torch.device, on_epoch=None, progress: bool = True, extra: dict | None = None,
        fingerprint: str = "", autocast: torch.dtype | None = None):
    """Train with model selection on the validation split only; resumes from `checkpoint`.

    A checkpoint is resumed only if its `fingerprint` (hash of inputs and hyperparameters)
    matches, so a changed config never continues a stale run. Returns (history DataFrame,
    best state_dict, best epoch, extra) where `extra` is the caller's bookkeeping dict,
    persisted in the checkpoint (e.g. the MLflow run id).
    """
    model.to(device)
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
    model.prepare(train.images, train.targets, train.groups)  # after a resume too: not saved
    bar = tqdm(total=hp["epochs"], initial=state["epoch"], desc="epochs", unit="ep",
               disable=not progress)
    while state["epoch"] < hp["epochs"] and state["since_best"] < hp["patience"]:
        epoch = state["epoch"] + 1
        start = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = scheduled_lr(hp, epoch)
        train_loss, train_acc = _train_epoch(model, optimizer, hp, train, device, seed, epoch,
                                             autocast)
        val_loss, val_acc = evaluate_loss(model, val, device, autocast=autocast)
        row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
               "val_loss": val_loss, "val_acc": val_acc, "lr": optimizer.param_groups[0]["lr"],
               "seconds": round(time.perf_counter() - start, 3)}
        state["history"].append(row)
        key = (val_acc, -val_loss)
        if state["best_key"] is None or key > state["best_key"]:
            state.update(best_key=key, best_epoch=epoch, since_best=0,
                         best_state={k: v.detach().cpu().clone()
                                     for k, v in model.state_dict().items()})
        else:
            state["since_best"] += 1
        state["epoch"] = epoch
        if on_epoch:  # before the checkpoint: a kill in between re-logs the same values
            on_epoch(row, state["extra"])
        _save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "state": state}, checkpoint)
        bar.update(1)
        bar.set_postfix(val_acc=f"{val_acc:.3f}", loss=f"{train_loss:.3f}")
    bar.close()
    history = pd.DataFrame(state["history"])
    return history, state["best_state"], state["best_epoch"], state["extra"]


def _train_epoch(model, optimizer, hp, train: Split, device, seed: int, epoch: int,
                 autocast: torch.dtype | None = None):
    """One pass in an order and with dropout masks fixed by (seed, epoch).

    Loss and accuracy are summed on the device and read once at the end: a per-batch
    `.item()` would make the host wait for the GPU at every step."""
    model.train()
    torch.manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + epoch))
    order = order.to(train.images.device)
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    batch_size = hp["batch_size"]
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        x = as_input(train.images[idx], device)
        y = train.targets[idx].to(device, non_blocking=True)
        with precision(device, autocast):
            loss, logits = model.objective(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.detach().float() * len(y)
        correct += (logits.argmax(1) == y).sum()
    seen = max(1, len(order))
    return total_loss.item() / seen, correct.item() / seen


def class_index(labels) -> dict[str, int]:
    return {label: i for i, label in enumerate(labels)}

