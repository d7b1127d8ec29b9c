"""The parts of benchmarks/gpu_check.sh written in Python: the tiny study and the table.

    python benchmarks/gpu_check.py study --device cuda --workdir DIR --json FILE
    python benchmarks/gpu_check.py table OUT_DIR --device cuda

`study` runs the tiny test study (tests.conftest.tiny_config) end to end through the real
Snakemake with `device:` set, checks what a finished study leaves (every fold's model and
metrics, the report, one MLflow run per fold under one parent:
tests.workflow_helpers.assert_study_finished), reads the device and precision the fold runs
logged, and compares its folds.csv with that of the same config on the CPU (only the stages
up to the folds run for it). `table` turns the JSON records the parts wrote into OUT_DIR into
one markdown table, headed by the machine (GPU, driver, torch build), and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

#: The study the tiny config runs, and what each part of the check aims at.
STUDY = Path("synthetic") / "subject_5fold"
MODEL = "deep_emotion"
LOOP_GOAL = {"cuda": 0.8, "cpu": 0.9}  # loop/bound at the paper batch size (issues 13, 16)
LIVE_GOAL_MS = 0.5  # mobilenet_cl classification ms/face on CUDA with 8 faces per frame
LIVE_GOAL_MODEL, LIVE_GOAL_FACES = "mobilenet_cl", 8
TOTAL_GOAL_S = {"cuda": 360, "cpu": 120}
#: Record files of the parts, in table order: (file, part label).
TRAIN_PARTS = (("train-bf16.jsonl", "training, bf16"), ("train-fp32.jsonl", "training, float32"))


def run_study(device: str, workdir: Path) -> dict:
    """The tiny study on `device` and the checks above; raises AssertionError on a miss."""
    from tests.conftest import tiny_config
    from tests.workflow_helpers import (assert_study_finished, mlflow_runs, run_snakemake,
                                        write_config)

    gpus = int(device == "cuda")
    study_dir, reference_dir = workdir / device, workdir / "cpu-folds"
    write_config(study_dir, tiny_config(Path("results"), device=device, train_gpus=gpus))
    start = time.perf_counter()
    run_snakemake(study_dir, *(["--resources", f"gpu={gpus}"] if gpus else []),
                  cores=os.cpu_count() or 1)
    seconds = time.perf_counter() - start
    results = study_dir / "results"
    assert_study_finished(results, MODEL, study=str(STUDY))
    _, fold_runs = mlflow_runs(results)
    devices = sorted({run.data.params["device"] for run in fold_runs})
    assert devices == [device], f"fold runs trained on {devices}, not {device}"
    write_config(reference_dir, tiny_config(Path("results"), device="cpu"))
    run_snakemake(reference_dir, f"results/{STUDY}/folds.csv")
    folds = (results / STUDY / "folds.csv").read_bytes()
    same_folds = folds == (reference_dir / "results" / STUDY / "folds.csv").read_bytes()
    assert same_folds, "folds.csv differs from the CPU run's"
    summary = json.loads((results / STUDY / MODEL / "summary.json").read_text())
    return {"device": device, "seconds": seconds, "fold_runs": len(fold_runs),
            "stages": sorted(p.name for p in (results / "benchmarks").iterdir()),
            "precision": sorted({run.data.params["precision"] for run in fold_runs}),
            "accuracy_mean": summary["accuracy_mean"], "same_folds_as_cpu": same_folds}


def machine(device: str) -> str:
    """The machine the figures come from: GPU, driver and torch build, or the CPU."""
    build = f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'}"
    build += f", cuDNN {torch.backends.cudnn.version()})" if torch.version.cuda else ")"
    if device == "cuda":
        driver = _nvidia_smi("driver_version") or "unknown driver"
        return f"{torch.cuda.get_device_name(0)}, driver {driver}, {build}"
    return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()}, {build}"


def _nvidia_smi(field: str) -> str:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.strip().splitlines()[0] if out.strip() else ""


def _records(path: Path) -> list[dict]:
    """The JSON lines of `path`; a line cut off by a part's time limit is left out (the
    part's own row says it timed out)."""
    records = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def train_rows(records: list[dict], label: str, device: str) -> list[list[str]]:
    goal = LOOP_GOAL[device]
    rows = []
    for r in records:
        if "error" in r:
            rows.append([label, r["model"], r["hyperparameters"], r["error"], ""])
            continue
        peak = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.0f} MiB"
        measured = (f"train {r['train_img_s']:.0f} img/s, inference {r['infer_img_s']:.0f} "
                    f"img/s, peak {peak}")
        verdict = ""
        if r["loop_over_bound"] is not None:
            measured += f"; loop {r['loop_img_s']:.0f} img/s = {r['loop_over_bound']:.2f} x bound"
            verdict = f"loop/bound >= {goal}: {_verdict(r['loop_over_bound'] >= goal)}"
        if r["pinned_over_bound"] is not None:  # informational: H200-sized GPUs move the split
            measured += (f"; from pinned host memory {r['pinned_img_s']:.0f} img/s = "
                         f"{r['pinned_over_bound']:.2f} x bound")
        setting = f"{r['input']}, batch {r['batch']}, {r['hyperparameters']}"
        rows.append([label, r["model"], setting, measured, verdict])
    return rows


def study_rows(records: list[dict]) -> list[list[str]]:
    rows = []
    for r in records:
        if "error" in r:
            rows.append([f"study ({r['device']})", MODEL, str(STUDY), r["error"], "**not met**"])
            continue
        measured = (f"{len(r['stages'])} stages ({', '.join(r['stages'])}) in "
                    f"{r['seconds']:.0f} s; {r['fold_runs']} folds' metrics and MLflow runs "
                    f"under 1 parent, device {r['device']}, {'/'.join(r['precision'])}; "
                    f"folds.csv {'identical to' if r['same_folds_as_cpu'] else 'differs from'} "
                    f"the CPU run's; accuracy {r['accuracy_mean']:.3f}")
        rows.append([f"study ({r['device']})", MODEL, f"{STUDY}, tiny config", measured,
                     "every stage, metrics, runs, same folds: met"])
    return rows


def live_rows(records: list[dict]) -> list[list[str]]:
    rows = []
    for r in records:
        measured = (f"classify {r['classification_ms_per_face']:.2f} ms/face, detect "
                    f"{r['detection_ms_per_frame']:.1f} ms/frame, preprocess "
                    f"{r['preprocessing_ms_per_face']:.2f} ms/face, {r['end_to_end_fps']:.1f} "
                    f"fps end to end, recall {r['recall']:.2f}")
        goal = ""
        if (r["device"], r["model"], r["faces_per_frame"]) == ("cuda", LIVE_GOAL_MODEL,
                                                                LIVE_GOAL_FACES):
            met = r["classification_ms_per_face"] <= LIVE_GOAL_MS
            goal = f"<= {LIVE_GOAL_MS} ms/face: {_verdict(met)}"
        setting = (f"{r['faces_per_frame']} faces/frame, {r['frames']} frames, "
                   f"{r['torch_threads']} threads")
        rows.append([f"live ({r['device']})", r["model"], setting, measured, goal])
    return rows


def table(out_dir: Path, device: str) -> str:
    """The markdown table of every record under `out_dir`, with the parts' status and time."""
    rows = []
    for name, label in TRAIN_PARTS:
        rows += train_rows(_records(out_dir / name), label, device)
    rows += study_rows(_records(out_dir / "study.jsonl"))
    rows += live_rows(_records(out_dir / "live.jsonl"))
    parts = _records(out_dir / "parts.jsonl")
    for part in parts:
        if part["rc"]:
            why = "timed out" if part["rc"] in (124, 137) else f"failed (exit {part['rc']})"
            rows.append([part["name"], "", "", f"{why} after {part['seconds']} s: see "
                         f"{out_dir / (part['name'] + '.log')}", "**not met**"])
    total = sum(part["seconds"] for part in parts)
    each = ", ".join(f"{part['name']} {part['seconds']} s" for part in parts)
    rows.append(["time", "", device, f"{total} s ({each})",
                 f"< {TOTAL_GOAL_S[device]} s: {_verdict(total < TOTAL_GOAL_S[device])}"])
    lines = [f"ferbench GPU check on {device}: {machine(device)}", "",
             "| part | model | setting | measured | goal |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    study = commands.add_parser("study", help="the tiny study through Snakemake")
    study.add_argument("--device", choices=("cpu", "cuda"), required=True)
    study.add_argument("--workdir", type=Path, required=True)
    study.add_argument("--json", type=Path, required=True, help="append the record here")
    render = commands.add_parser("table", help="print the markdown table of OUT_DIR's records")
    render.add_argument("out_dir", type=Path)
    render.add_argument("--device", choices=("cpu", "cuda"), required=True)
    args = parser.parse_args()
    if args.command == "table":
        print(table(args.out_dir, args.device))
        return
    try:  # absolute: Snakemake runs in the study folder
        record = run_study(args.device, args.workdir.resolve())
    except AssertionError as error:  # the whole message (Snakemake's output) goes to the log
        print(error, file=sys.stderr)
        lines = str(error).strip().splitlines() or [""]
        record = {"device": args.device,
                  "error": next((line for line in lines if "Error" in line), lines[0])}
    with args.json.open("a") as out:
        out.write(json.dumps(record) + "\n")
    print(json.dumps(record))
    if "error" in record:
        raise SystemExit(f"study check failed: {record['error']}")


if __name__ == "__main__":
    main()
