"""Training and inference images/s and peak memory of every model, on CPU and CUDA.

Before a study is scheduled we need to know how long each model takes per epoch and whether
it fits the machine. For every registered model (or --models) and every device (CPU, and
CUDA when available) this prints: input shape, parameter count, training images/s (forward
+ the paper's objective + backward + optimizer step on one batch already on the device,
repeated: the data-path-free bound), inference images/s (eval-mode forward) and peak memory
while training (CUDA: torch.cuda.max_memory_allocated; CPU: growth of the process's peak
resident set). The batch size is each paper's unless --batch-size.

It also times the training loop itself (`train._train_epoch`, what `train.fit` runs every
epoch) over a split of --steps batches held as the loop holds it (`train.on_device`): uint8
faces cut into shuffled batches and scaled per batch. `loop/bound` is its images/s over the
bound's; what falls short of 1 is the data path (indexing, copies, host syncs). On CUDA
the loop is timed twice: on the split moved to the GPU (what `on_device` does when it fits)
and on the split pinned in host memory (its path for splits too large to move). With
--repeats R the bound and the loop are timed R times, interleaved, and the best of each is
kept, so other jobs competing for the machine distort the ratio less.

--width, --input-size, --max-input-size and --set NAME=VALUE override the papers'
hyperparameters of the models that have them, so a quick run fits a small CPU; the header
and every row say which overrides apply, so these numbers are not mistaken for paper-size
ones. A model that refuses the settings (or fails to run, e.g. out of memory) is listed with
the reason. --json FILE appends every row to FILE as one JSON object (benchmarks/gpu_check.sh
collects them).

    python benchmarks/train_throughput.py [--models deepfer mobilenet_cl] [--steps 10]
        [--width 0.25 --max-input-size 64] [--batch-size 32] [--amp bfloat16] [--devices cpu]
        [--repeats 2] [--no-loop] [--json rows.jsonl]
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import ctypes
import gc
import json
import resource
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ferbench.jobs import save_model
from ferbench.models import REGISTRY, ModelSpec, parameter_count
from ferbench.train import Split, _train_epoch, as_input, make_optimizer, on_device

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
COLUMNS = (f"{'model':<14} {'input':>11} {'batch':>5} {'params':>12} {'train img/s':>11} "
           f"{'infer img/s':>11} {'peak MiB':>9} {'loop img/s':>10} {'loop/bound':>10} "
           f"{'pinned/bound':>12}  hyperparameters")

try:  # glibc keeps freed heap pages resident; returning them makes RSS growth measurable
    _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):
    _malloc_trim = None


def start_peak_memory(device: torch.device) -> int | None:
    """Reset the device's peak-memory mark; the baseline in bytes, None if it cannot be reset.

    On CPU the mark is the kernel's peak RSS, reset by writing 5 to /proc/self/clear_refs
    (Linux); without the reset, ru_maxrss would still hold an earlier, larger model's peak.
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    if _malloc_trim is not None:
        _malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _peak_rss_bytes()


def peak_memory_growth(device: torch.device, baseline: int | None) -> int | None:
    if baseline is None:
        return None
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) - baseline
    return _peak_rss_bytes() - baseline


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def initialise_runtime(device: torch.device) -> None:
    """Train a tiny CNN for two steps so that once-per-process costs skip the first row.

    Kernel code paged in, thread pools and cuBLAS workspaces would otherwise add to the first
    model's peak memory (about 90 MiB of RSS on CPU).
    """
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(), nn.Linear(8 * 16 * 16, 7)
                          ).to(device)
    optimizer = torch.optim.Adam(model.parameters())
    x = torch.randn(16, 1, 32, 32, device=device)
    targets = torch.zeros(16, dtype=torch.long, device=device)
    for _ in range(2):
        loss = F.cross_entropy(model(x), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def images_per_second(step, batch_size: int, warmup: int, steps: int,
                      device: torch.device) -> float:
    """Run `step` `warmup` times untimed (allocator, cuDNN and oneDNN caches), then time it."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return batch_size * steps / (time.perf_counter() - start)


def synthetic_split(model: torch.nn.Module, size: int, side: int, classes: int) -> Split:
    """`size` random uint8 faces (N, C, S, S), as the training loop holds a split.

    Models with `extra_channels` (an AU attention map) get them as more uint8 channels,
    scaled like the face by `as_input`; the targets cycle through every class, as damcnn
    step 2 needs each class among the prepared samples.
    """
    channels = 1 + len(getattr(model, "extra_channels", ()))
    faces = torch.randint(0, 256, (size, channels, side, side), dtype=torch.uint8)
    return Split(faces, torch.arange(size) % classes)


def loop_images_per_second(model: torch.nn.Module, optimizer, hp: dict, split: Split,
                           device: torch.device, autocast: torch.dtype | None,
                           warmup: int) -> float:
    """Images/s of one training-loop epoch over `split`, after `warmup` untimed batches.

    The epoch ends by reading its loss from the device, so no extra synchronisation is needed.
    """
    if warmup:
        head = warmup * hp["batch_size"]
        _train_epoch(model, optimizer, hp, Split(split.images[:head], split.targets[:head]),
                     device, 0, 0, autocast)
    start = time.perf_counter()
    _train_epoch(model, optimizer, hp, split, device, 0, 1, autocast)
    return len(split) / (time.perf_counter() - start)


def input_overrides(spec: ModelSpec, overrides: dict, max_input_size: int | None) -> dict:
    """The overrides this model has; with `max_input_size`, a larger paper input shrinks."""
    applied = {name: value for name, value in overrides.items() if name in spec.defaults}
    if max_input_size and spec.defaults["input_size"] > max_input_size:
        applied["input_size"] = max_input_size
    return applied


def measure(spec: ModelSpec, overrides: dict, device: torch.device, args) -> dict:
    """One table row: the measurements, or under `error` why the model could not be built or
    run."""
    applied = input_overrides(spec, overrides, args.max_input_size)
    amp_dtype = AMP_DTYPES.get(args.amp) if device.type == "cuda" else None
    row = {"device": device.type, "model": spec.name,
           "precision": str(amp_dtype or torch.float32).removeprefix("torch."),
           "hyperparameters": " ".join(f"{k}={v}" for k, v in applied.items()) or "paper"}
    hp = spec.hyperparameters(applied)
    hp["batch_size"] = batch_size = args.batch_size or hp["batch_size"]
    side = spec.input_size(hp)
    if spec.starts_from:  # DAM-CNN's step 2 loads its frozen trunk from a step-1 model.pt
        hp["init_from"] = str(untrained_start(spec.starts_from, applied, args))
    elif "init_from" in hp:  # pretrained starts change no cost: time random weights
        hp["init_from"] = ""
    baseline = start_peak_memory(device)
    try:
        torch.manual_seed(0)
        model = spec.load_start(spec.build(args.classes, hp), hp).to(device)
    except Exception as error:  # the model refuses these hyperparameters
        return {**row, "error": f"cannot build: {_first_line(error)}"}

    def mixed_precision():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=amp_dtype)

    try:
        host = synthetic_split(model, batch_size * args.steps, side, args.classes)
        split = on_device(host, device)
        x = as_input(split.images[:batch_size], device)
        targets = split.targets[:batch_size].to(device)
        model.prepare(split.images, split.targets)
        optimizer = make_optimizer(model, hp)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)

        def training_step():
            with mixed_precision():
                loss, _ = model.objective(x, targets)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

        def inference_step():
            with torch.inference_mode(), mixed_precision():
                model(x)

        # The training loop autocasts to bfloat16 or not at all (train.autocast_dtype).
        time_loop = args.loop and amp_dtype is not torch.float16
        pinned = (Split(host.images.pin_memory(), host.targets.pin_memory())
                  if time_loop and device.type == "cuda" else None)
        model.train()
        train_rate = loop_rate = pinned_rate = 0.0
        for repeat in range(args.repeats):
            warmup = 0 if repeat else args.warmup
            train_rate = max(train_rate, images_per_second(training_step, batch_size, warmup,
                                                           args.steps, device))
            if time_loop:
                loop_rate = max(loop_rate, loop_images_per_second(
                    model, optimizer, hp, split, device, amp_dtype, warmup))
            if pinned is not None:
                pinned_rate = max(pinned_rate, loop_images_per_second(
                    model, optimizer, hp, pinned, device, amp_dtype, warmup))
        peak = peak_memory_growth(device, baseline)
        model.eval()
        infer_rate = images_per_second(inference_step, batch_size, args.warmup, args.steps,
                                       device)
    except Exception as error:  # e.g. out of memory, or an op without a low-precision kernel
        return {**row, "error": f"failed: {_first_line(error)}"}
    return {**row, "input": f"{x.shape[1]}x{side}x{side}", "batch": batch_size,
            "params": parameter_count(model), "train_img_s": train_rate,
            "infer_img_s": infer_rate, "peak_mib": None if peak is None else peak / 2 ** 20,
            "loop_img_s": loop_rate or None,
            "loop_over_bound": loop_rate / train_rate if loop_rate else None,
            "pinned_img_s": pinned_rate or None,
            "pinned_over_bound": pinned_rate / train_rate if pinned_rate else None}


def format_row(row: dict) -> str:
    if "error" in row:
        return f"{row['model']:<14} {row['error']} ({row['hyperparameters']})"

    def number(value, spec: str, width: int) -> str:
        return f"{'n/a':>{width}}" if value is None else f"{value:>{width}{spec}}"

    return (f"{row['model']:<14} {row['input']:>11} {row['batch']:>5} {row['params']:>12,} "
            f"{row['train_img_s']:>11.1f} {row['infer_img_s']:>11.1f} "
            f"{number(row['peak_mib'], '.0f', 9)} {number(row['loop_img_s'], '.1f', 10)} "
            f"{number(row['loop_over_bound'], '.2f', 10)} "
            f"{number(row['pinned_over_bound'], '.2f', 12)}  {row['hyperparameters']}")


def untrained_start(model: str, overrides: dict, args) -> Path:
    """An untrained `model.pt` of the model another one starts from, with the same sizes."""
    spec = REGISTRY[model]
    hp = spec.hyperparameters({k: v for k, v in overrides.items() if k in spec.defaults})
    path = Path(tempfile.mkdtemp(prefix="ferbench-throughput-")) / "model.pt"
    return save_model(path, model, range(args.classes), hp,
                      spec.build(args.classes, hp).state_dict(), {})


def _first_line(error: Exception) -> str:
    """The exception's type and first line (CUDA out-of-memory messages run to a paragraph)."""
    message = str(error).strip()
    return f"{type(error).__name__}: {message.splitlines()[0] if message else ''}"


def _assignment(text: str) -> tuple[str, object]:
    """NAME=VALUE with VALUE a Python literal (2, 0.5, 'sgd'), else taken as a string."""
    name, separator, value = text.partition("=")
    if not separator:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def header(device: torch.device, overrides: dict, args) -> str:
    if device.type == "cuda":
        where = f"cuda ({torch.cuda.get_device_name(device)}), {args.amp or 'float32'}"
    else:
        where = f"cpu ({torch.get_num_threads()} threads), float32"
    changed = [f"{name}={value}" for name, value in overrides.items()]
    if args.max_input_size:
        changed.append(f"input_size<={args.max_input_size}")
    if changed:
        settings = (f"OVERRIDES {', '.join(changed)} (where a model has the hyperparameter) "
                    f"-- not the papers' settings")
    else:
        settings = "papers' hyperparameters"
    batch = f"batch {args.batch_size}" if args.batch_size else "papers' batch sizes"
    return (f"{where}; {settings}; {batch}; {args.warmup} warm-up + {args.steps} timed steps, "
            f"best of {args.repeats}; peak MiB = memory growth while training\n{COLUMNS}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    trained = [name for name, spec in REGISTRY.items() if spec.trains_by_gradient]
    parser.add_argument("--models", nargs="+", choices=trained, default=trained,
                        metavar="NAME", help=f"default: all of {', '.join(trained)} (the "
                        "models trained by gradient steps)")
    parser.add_argument("--devices", nargs="+", choices=("cpu", "cuda"), default=["cpu", "cuda"],
                        help="cuda is skipped when torch.cuda.is_available() is false")
    parser.add_argument("--width", type=float, help="override `width` (channel multiplier)")
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--input-size", type=int, help="override `input_size` (side in pixels)")
    sizes.add_argument("--max-input-size", type=int,
                       help="shrink papers' inputs larger than this; smaller ones stay")
    parser.add_argument("--set", type=_assignment, action="append", default=[],
                        metavar="NAME=VALUE", help="override any hyperparameter, e.g. decoders=2")
    parser.add_argument("--batch-size", type=int, help="default: each paper's")
    parser.add_argument("--steps", type=int, default=10,
                        help="timed steps per rate (and batches in the loop's split)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument("--repeats", type=int, default=1,
                        help="time bound and loop this often, interleaved; keep the best")
    parser.add_argument("--loop", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the training loop (loop img/s, loop/bound)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument("--classes", type=int, default=7)
    parser.add_argument("--amp", choices=list(AMP_DTYPES),
                        help="autocast to this dtype on CUDA (CPU stays float32)")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="append every row to FILE as a JSON object")
    args = parser.parse_args()
    overrides = {name: value for name, value in
                 (("width", args.width), ("input_size", args.input_size)) if value is not None}
    overrides.update(args.set)
    known = set().union(*(REGISTRY[name].defaults for name in args.models))
    unknown = sorted(set(overrides) - known)
    if unknown:
        parser.error(f"no selected model has hyperparameter {', '.join(unknown)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device(kind) for kind in args.devices
               if kind == "cpu" or torch.cuda.is_available()]
    for index, device in enumerate(devices):
        print(("\n" if index else "") + header(device, overrides, args), flush=True)
        initialise_runtime(device)
        for name in args.models:
            row = measure(REGISTRY[name], overrides, device, args)
            print(format_row(row), flush=True)
            if args.json:
                with args.json.open("a") as out:
                    out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
