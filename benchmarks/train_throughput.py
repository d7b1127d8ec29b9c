"""Training and inference images/s and peak memory of every model, on CPU and CUDA.

Before a study is scheduled we need to know how long each model takes per epoch and whether
it fits the machine. For every registered model (or --models) and every device (CPU, and
CUDA when available) this prints: input shape, parameter count, training images/s (forward
+ the paper's objective + backward + optimizer step), inference images/s (eval-mode forward)
and peak memory while training (CUDA: torch.cuda.max_memory_allocated; CPU: growth of the
process's peak resident set). Inputs are synthetic and already on the device, so data
loading is not counted; the batch size is each paper's unless --batch-size.

--width, --input-size and --set NAME=VALUE override the papers' hyperparameters of the
models that have them, so a quick run fits a small CPU; the header and every row say which
overrides apply, so these numbers are not mistaken for paper-size ones. A model that
refuses the settings (or fails to run, e.g. out of memory) is listed with the reason.

    python benchmarks/train_throughput.py [--models deepfer mobilenet_cl] [--steps 10]
        [--width 0.25 --input-size 64] [--batch-size 32] [--amp bfloat16] [--devices cpu]
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import ctypes
import gc
import resource
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ferbench.jobs import save_model
from ferbench.models import REGISTRY, ModelSpec, parameter_count
from ferbench.train import as_input, make_optimizer

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
COLUMNS = (f"{'model':<14} {'input':>11} {'batch':>5} {'params':>12} {'train img/s':>11} "
           f"{'infer img/s':>11} {'peak MiB':>9}  hyperparameters")

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


def synthetic_batch(model: torch.nn.Module, batch_size: int, side: int, classes: int,
                    device: torch.device):
    """uint8 faces (for `prepare`), the model's input on the device and targets.

    Models with `extra_channels` (an AU attention map, scaled like the face to [-1, 1]) get
    them appended as uniform noise; the targets cycle through every class, as damcnn step 2 needs each
    class among the prepared samples.
    """
    faces = torch.randint(0, 256, (batch_size, 1, side, side), dtype=torch.uint8)
    x = as_input(faces, device)
    extra = len(getattr(model, "extra_channels", ()))
    if extra:
        x = torch.cat([x, torch.rand(batch_size, extra, side, side, device=device) * 2 - 1], 1)
    targets = torch.arange(batch_size) % classes
    return faces, x, targets.to(device)


def measure(spec: ModelSpec, overrides: dict, device: torch.device, args) -> str:
    """One table row: the measurements, or why the model could not be built or run."""
    applied = {name: value for name, value in overrides.items() if name in spec.defaults}
    described = " ".join(f"{name}={value}" for name, value in applied.items()) or "paper"
    hp = spec.hyperparameters(applied)
    batch_size = args.batch_size or hp["batch_size"]
    side = spec.input_size(hp)
    if spec.starts_from:  # DAM-CNN's step 2 loads its frozen trunk from a step-1 model.pt
        hp["init_from"] = str(untrained_start(spec.starts_from, overrides, args))
    baseline = start_peak_memory(device)
    try:
        torch.manual_seed(0)
        model = spec.load_start(spec.build(args.classes, hp), hp).to(device)
    except Exception as error:  # the model refuses these hyperparameters
        return f"{spec.name:<14} cannot build ({described}): {_first_line(error)}"
    amp_dtype = AMP_DTYPES.get(args.amp) if device.type == "cuda" else None

    def mixed_precision():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=amp_dtype)

    try:
        faces, x, targets = synthetic_batch(model, batch_size, side, args.classes, device)
        model.prepare(faces, targets.cpu())
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

        model.train()
        train_rate = images_per_second(training_step, batch_size, args.warmup, args.steps, device)
        peak = peak_memory_growth(device, baseline)
        model.eval()
        infer_rate = images_per_second(inference_step, batch_size, args.warmup, args.steps,
                                       device)
    except Exception as error:  # e.g. out of memory, or an op without a low-precision kernel
        return f"{spec.name:<14} failed ({described}): {_first_line(error)}"
    shape = f"{x.shape[1]}x{side}x{side}"
    peak_text = "n/a" if peak is None else f"{peak / 2 ** 20:.0f}"
    return (f"{spec.name:<14} {shape:>11} {batch_size:>5} {parameter_count(model):>12,} "
            f"{train_rate:>11.1f} {infer_rate:>11.1f} {peak_text:>9}  {described}")


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
    if overrides:
        changed = ", ".join(f"{name}={value}" for name, value in overrides.items())
        settings = (f"OVERRIDES {changed} (where a model has the hyperparameter) "
                    f"-- not the papers' settings")
    else:
        settings = "papers' hyperparameters"
    batch = f"batch {args.batch_size}" if args.batch_size else "papers' batch sizes"
    return (f"{where}; {settings}; {batch}; {args.warmup} warm-up + {args.steps} timed steps; "
            f"peak MiB = memory growth while training\n{COLUMNS}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(REGISTRY), default=list(REGISTRY),
                        metavar="NAME", help=f"default: all of {', '.join(REGISTRY)}")
    parser.add_argument("--devices", nargs="+", choices=("cpu", "cuda"), default=["cpu", "cuda"],
                        help="cuda is skipped when torch.cuda.is_available() is false")
    parser.add_argument("--width", type=float, help="override `width` (channel multiplier)")
    parser.add_argument("--input-size", type=int, help="override `input_size` (side in pixels)")
    parser.add_argument("--set", type=_assignment, action="append", default=[],
                        metavar="NAME=VALUE", help="override any hyperparameter, e.g. decoders=2")
    parser.add_argument("--batch-size", type=int, help="default: each paper's")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per rate")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument("--classes", type=int, default=7)
    parser.add_argument("--amp", choices=list(AMP_DTYPES),
                        help="autocast to this dtype on CUDA (CPU stays float32)")
    args = parser.parse_args()
    overrides = {name: value for name, value in
                 (("width", args.width), ("input_size", args.input_size)) if value is not None}
    overrides.update(args.set)
    known = set().union(*(REGISTRY[name].defaults for name in args.models))
    unknown = sorted(set(overrides) - known)
    if unknown:
        parser.error(f"no selected model has hyperparameter {', '.join(unknown)}")
    devices = [torch.device(kind) for kind in args.devices
               if kind == "cpu" or torch.cuda.is_available()]
    for index, device in enumerate(devices):
        print(("\n" if index else "") + header(device, overrides, args), flush=True)
        initialise_runtime(device)
        for name in args.models:
            print(measure(REGISTRY[name], overrides, device, args), flush=True)


if __name__ == "__main__":
    main()
