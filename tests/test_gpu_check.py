"""benchmarks/gpu_check.sh on a machine without CUDA: it says the GPU run is owed, runs its
CPU parts (every model's training loop against its bound, the tiny study through the real
Snakemake, live ms/face) and exits 0 with one table; and how that table judges the goals."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from ferbench.models import REGISTRY
from tests.conftest import ROOT, TINY_FOLDS
from tests.workflow_helpers import env

#: The script's tests share one run of it (the `check` fixture): the file's minutes.
SLOW = pytest.mark.slow(minutes=4)


@pytest.fixture(scope="module")
def check(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], cwd=ROOT,
                            env={**env(), "PYTHON": sys.executable, "GPU_CHECK_OUT": str(out)},
                            capture_output=True, text=True, timeout=1800)
    return result, out


@SLOW
def test_without_cuda_it_says_the_gpu_run_is_owed_and_exits_0(check):
    result, out = check
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "no CUDA device: GPU run owed" in result.stdout
    assert (out / "table.md").read_text().strip() in result.stdout


@SLOW
def test_the_table_has_every_models_loop_over_bound_ratio(check):
    result, _ = check
    rows = [line.split(" | ") for line in result.stdout.splitlines()
            if line.startswith("| training, float32 | ")]
    assert sorted(row[1] for row in rows) == sorted(
        name for name, spec in REGISTRY.items() if spec.trains_by_gradient)
    for row in rows:
        ratio = re.search(r"loop \d+ img/s = (\d+\.\d+) x bound", row[3])
        assert ratio and float(ratio.group(1)) > 0, row
        assert "loop/bound >= 0.9" in row[4]


@SLOW
def test_the_tiny_study_and_live_rows_come_from_their_runs(check):
    result, out = check
    study = json.loads((out / "study.jsonl").read_text())
    assert study["device"] == "cpu" and study["same_folds_as_cpu"]
    assert study["fold_runs"] == TINY_FOLDS
    assert {"train", "evaluate", "folds", "report"} <= set(study["stages"])
    assert "| study (cpu) | deep_emotion |" in result.stdout
    live = [json.loads(line) for line in (out / "live.jsonl").read_text().splitlines()]
    assert sorted(cell["faces_per_frame"] for cell in live) == [1, 3, 8]
    assert all(cell["classification_ms_per_face"] > 0 for cell in live)
    assert result.stdout.count("| live (cpu) | mobilenet_cl |") == 3
    assert os.path.isdir(out / "study" / "cpu-folds")


def test_goals_are_judged_per_device_and_only_where_the_issue_sets_them():
    from benchmarks import gpu_check

    row = {"model": "deepfer", "input": "1x48x48", "batch": 64, "hyperparameters": "paper",
           "train_img_s": 1000.0, "infer_img_s": 4000.0, "peak_mib": 300.0,
           "loop_img_s": 850.0, "loop_over_bound": 0.85, "pinned_img_s": 700.0,
           "pinned_over_bound": 0.7}
    (on_gpu,), (on_cpu,) = (gpu_check.train_rows([row], "training", d) for d in ("cuda", "cpu"))
    assert on_gpu[4] == "loop/bound >= 0.8: met" and "pinned host memory 700 img/s" in on_gpu[3]
    assert on_cpu[4] == "loop/bound >= 0.9: **not met**"
    cell = {"model": "mobilenet_cl", "faces_per_frame": 8, "frames": 60, "torch_threads": 2,
            "classification_ms_per_face": 0.6, "detection_ms_per_frame": 9.0,
            "preprocessing_ms_per_face": 1.0, "end_to_end_fps": 30.0, "recall": 1.0}
    goals = [gpu_check.live_rows([{**cell, **change}])[0][4] for change in (
        {"device": "cuda"}, {"device": "cuda", "classification_ms_per_face": 0.4},
        {"device": "cuda", "faces_per_frame": 3}, {"device": "cpu"})]
    assert goals == ["<= 0.5 ms/face: **not met**", "<= 0.5 ms/face: met", "", ""]


def test_a_record_cut_off_by_a_time_limit_is_left_out(tmp_path):
    from benchmarks import gpu_check

    records = tmp_path / "train-fp32.jsonl"
    records.write_text('{"model": "deepfer"}\n{"model": "deep_emo')
    assert gpu_check._records(records) == [{"model": "deepfer"}]
    assert gpu_check._records(tmp_path / "absent.jsonl") == []
