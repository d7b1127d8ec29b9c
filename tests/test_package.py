"""ferbench installs like a package: a built wheel, installed (not editable) into a folder,
runs its CLI from an unrelated directory with nothing read from the repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.slow(minutes=1)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(site folder, the installed `ferbench` script, an environment that imports it)."""
    base = tmp_path_factory.mktemp("package")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    # No build isolation: the venv's setuptools builds it, so the test needs no network.
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(base / "dist"),
                    str(ROOT)], check=True, cwd=base, timeout=300)
    wheel, = (base / "dist").glob("ferbench-*.whl")
    site = base / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, cwd=base, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("FERBENCH_MEDIAPIPE_PYTHON", None)
    return site, site / "bin" / "ferbench", env


def run(installed, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    _, script, env = installed
    return subprocess.run([str(script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_installed_copy_is_what_is_imported(installed, tmp_path):
    site, _, env = installed
    result = subprocess.run([sys.executable, "-c", "import ferbench; print(ferbench.__file__)"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert Path(result.stdout.strip()).is_relative_to(site)
    assert (site / "ferbench" / "config.schema.yaml").is_file()
    assert (site / "ferbench" / "published.yaml").is_file()


def test_models_and_manifest_run_from_any_directory(installed, tmp_path):
    result = run(installed, "models", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "deepfer" in result.stdout and "1x48x48" in result.stdout
    for i, folder in enumerate(("train/happy", "train/sad", "test/happy")):
        (tmp_path / "data" / folder).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "data" / folder / f"{i}.png"), np.full((8, 8), i, np.uint8))
    result = run(installed, "manifest", "folder", "data", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "images: 3" in result.stdout


def test_a_study_file_validates_against_the_shipped_schema(installed, tmp_path):
    """dvc-yaml validates the study (schema defaults filled in) from package data alone."""
    config = yaml.safe_load((ROOT / "params.yaml").read_text())
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
    result = run(installed, "dvc-yaml", "--config", "study.yaml", "-o", "dvc.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "train_synthetic_subject_5fold_deepfer" in (tmp_path / "dvc.yaml").read_text()
    config["models"]["deepfer"]["lr"] = -1
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
    result = run(installed, "dvc-yaml", "--config", "study.yaml", "-o", "dvc.yaml", cwd=tmp_path)
    assert result.returncode != 0 and "models.deepfer.lr" in result.stderr


def test_live_and_the_mediapipe_lookup_from_any_directory(installed, tmp_path):
    result = run(installed, "live", "--help", cwd=tmp_path)
    assert result.returncode == 0 and "--model" in result.stdout, result.stderr
    _, _, env = installed
    lookup = subprocess.run(
        [sys.executable, "-c", "from ferbench import mediapipe_client as m; m.interpreter()"],
        cwd=tmp_path, env=env, capture_output=True, text=True)
    assert lookup.returncode != 0
    assert f"no mediapipe interpreter at {tmp_path}/.venv-mediapipe" in lookup.stderr


def test_predict_from_any_directory(installed, tmp_path):
    """The installed `ferbench predict` finds the astronaut's face and writes its table."""
    from skimage import data

    from ferbench import faces, live

    live.write_untrained_model(tmp_path / "model.pt", "deep_emotion", ["neutral", "happiness"],
                               vars(faces.FaceOptions()), seed=5)
    cv2.imwrite(str(tmp_path / "photo.png"), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    result = run(installed, "predict", "photo.png", "--model", "model.pt", "--format", "jsonl",
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    row, = (json.loads(line) for line in result.stdout.splitlines())
    assert row["label"] in ("neutral", "happiness")
    assert faces.iou(tuple(row["box"]), live.ASTRONAUT_FACE) > 0.7
