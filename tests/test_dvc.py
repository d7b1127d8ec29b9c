"""`dvc repro` on a fresh copy of the project reproduces the study; a local remote round-trips."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ferbench import config as config_mod
from ferbench import dvcgen
from tests.conftest import ROOT, tiny_config
from tests.workflow_helpers import BIN, STUDY_FILE, env, write_config

pytestmark = pytest.mark.slow


def run(cmd, cwd, timeout=900):
    result = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def fresh_copy(dest: Path) -> Path:
    """The project's tracked and unignored files, as a fresh clone would have them."""
    listed = run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], ROOT)
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    run(["git", "init", "-q"], dest)
    return dest


def test_committed_dvc_yaml_is_generated_from_the_default_config():
    config = config_mod.load(ROOT / "config" / "demo.yaml")
    assert (ROOT / "dvc.yaml").read_text() == dvcgen.render(config, "config/demo.yaml")


def test_dvc_repro_reproduces_and_remote_round_trips(tmp_path):
    project = fresh_copy(tmp_path / "clone")
    write_config(project, tiny_config(Path("results")))
    run([str(BIN / "ferbench"), "dvc-yaml", "--config", str(STUDY_FILE)], project)
    run([str(BIN / "dvc"), "repro"], project, timeout=1200)

    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    hashed = {out["path"]: out.get("md5") for stage in lock.values() for out in stage["outs"]}
    for path in ("results/synthetic/raw", "results/synthetic/faces/faces.npy",
                 "results/synthetic/subject_5fold/folds.csv",
                 "results/synthetic/subject_5fold/deep_emotion/fold0/model.pt",
                 "results/synthetic/subject_5fold/deep_emotion/fold0/metrics.json",
                 "results/metrics.json"):
        assert hashed.get(path), f"dvc.lock has no hash for {path}"

    shown = run([str(BIN / "dvc"), "metrics", "show", "--json"], project)
    metrics = json.loads((project / "results" / "metrics.json").read_text())
    accuracy = metrics["synthetic/subject_5fold/deep_emotion"]["accuracy_mean"]
    assert "accuracy_mean" in shown and f"{accuracy}"[:6] in shown

    status = run([str(BIN / "dvc"), "status"], project)
    assert "up to date" in status.lower()

    remote = tmp_path / "remote"
    run([str(BIN / "dvc"), "remote", "add", "-d", "local", str(remote)], project)
    run([str(BIN / "dvc"), "push"], project)
    model = project / "results/synthetic/subject_5fold/deep_emotion/fold0/model.pt"
    original = model.read_bytes()
    shutil.rmtree(project / "results")
    shutil.rmtree(project / ".dvc" / "cache")
    run([str(BIN / "dvc"), "pull"], project)
    assert model.read_bytes() == original
    assert "up to date" in run([str(BIN / "dvc"), "status"], project).lower()
