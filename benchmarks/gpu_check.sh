#!/usr/bin/env bash
# Everything of ferbench that needs CUDA, run in at most 6 minutes on one GPU, as one table.
#
#   bash benchmarks/gpu_check.sh [--require-cuda]
#
# With CUDA: benchmarks/train_throughput.py --devices cuda for every model at the papers'
# input and batch sizes, bf16 autocast on and off (training and inference img/s, peak GPU
# memory, and the training loop's img/s over the data-path-free bound); the tiny study end to
# end through Snakemake with `device: cuda` (benchmarks/gpu_check.py study); `ferbench live`
# ms per face with 1, 3 and 8 faces per frame (benchmarks/live.py). Each part has a time
# limit, so the whole stays within the 6 minutes.
# Without CUDA it says so and runs the same parts on the CPU at CPU sizes (width 0.25, inputs
# of at most 64 px, one thread) in under 2 minutes on 2 cores: what CI runs. --require-cuda
# makes it exit 1 there instead.
#
# The table is printed and saved as $GPU_CHECK_OUT/table.md (default benchmarks/out/gpu_check),
# each part's output beside it as PART.log. Exit status 0 when every part ran, whether or not
# the figures meet their goals (the table says which); 1 when a part failed or timed out.
#
# The project pins the CPU build of torch==2.13.0, which cannot see a GPU. On a GPU machine
# replace it by the CUDA build of the same version (nothing else changes), from the wheel index
# of a CUDA version the driver supports (nvidia-smi's "CUDA Version" or lower), e.g. cu128:
#   .venv/bin/pip uninstall -y torch
#   .venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128
# (docs/performance.md has the steps; uninstall first: pip takes 2.13.0+cpu for 2.13.0).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
python=${PYTHON:-.venv/bin/python}
out=${GPU_CHECK_OUT:-benchmarks/out/gpu_check}
export PYTHONPATH="$root/src:$root${PYTHONPATH:+:$PYTHONPATH}"
require_cuda=false
if [[ ${1:-} == --require-cuda ]]; then
  require_cuda=true
fi

torch_build=$("$python" -c 'import torch; print(torch.__version__, torch.cuda.is_available())')
if [[ $torch_build == *True ]]; then
  device=cuda
else
  device=cpu
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    echo "nvidia-smi sees a GPU but torch ${torch_build% *} cannot: install the CUDA build" \
      "of torch==2.13.0 (see the top of $0)" >&2
  fi
  echo "no CUDA device: GPU run owed; running the CPU parts"
  if $require_cuda; then
    exit 1
  fi
fi

mkdir -p "$out"
rm -rf "$out/study" "$out"/*.jsonl "$out"/*.log "$out/table.md"  # an earlier run's
status=0

# part NAME SECONDS COMMAND...: run COMMAND for at most SECONDS, its output in NAME.log, and
# record its exit status and duration for the table.
part() {
  local name=$1 limit=$2 start=$SECONDS rc=0
  shift 2
  echo "== $name (at most $limit s)"
  timeout -k 10 "$limit" "$@" >"$out/$name.log" 2>&1 || rc=$?
  printf '{"name": "%s", "rc": %d, "seconds": %d}\n' "$name" "$rc" $((SECONDS - start)) \
    >>"$out/parts.jsonl"
  if ((rc)); then
    status=1
    echo "   $name failed (exit $rc): $out/$name.log"
  fi
}

throughput=("$python" benchmarks/train_throughput.py --devices "$device")
study=("$python" benchmarks/gpu_check.py study --device "$device" --workdir "$out/study"
  --json "$out/study.jsonl")
live=("$python" benchmarks/live.py --devices "$device" --detectors haar --full-search-every 1
  --json "$out/live.jsonl")
if [[ $device == cuda ]]; then
  throughput+=(--steps 10 --warmup 3 --repeats 2)
  part train-bf16 85 "${throughput[@]}" --amp bfloat16 --json "$out/train-bf16.jsonl"
  part train-fp32 85 "${throughput[@]}" --json "$out/train-fp32.jsonl"
  part study 120 "${study[@]}"
  part live 60 "${live[@]}" --frames 60 --repeats 2
else  # one thread, as the study's training jobs; the limits only stop a hang (the goal,
  # under 2 minutes, is the table's last row)
  part train-fp32 600 "${throughput[@]}" --threads 1 --width 0.25 --max-input-size 64 \
    --steps 4 --warmup 1 --repeats 2 --json "$out/train-fp32.jsonl"
  part study 600 "${study[@]}"
  part live 300 "${live[@]}" --threads 1 --models mobilenet_cl --frames 15 --repeats 1
fi

"$python" benchmarks/gpu_check.py table "$out" --device "$device" | tee "$out/table.md"
exit $status
