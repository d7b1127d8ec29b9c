"""DVC on a fresh copy of the project: `dvc repro` reproduces the study, `dvc plots` draws its
curves and confusion matrices, `dvc status` names exactly what a change makes stale, `dvc exp
run -S` sets a study key, and a local remote round-trips."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ferbench import config as config_mod
from ferbench import dvcgen
from tests.conftest import ROOT, TINY_FOLDS, tiny_config
from tests.workflow_helpers import BIN, STUDY_FILE, env, write_config

pytestmark = pytest.mark.slow(minutes=5)


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
    config = config_mod.load(ROOT / "params.yaml")
    assert (ROOT / "dvc.yaml").read_text() == dvcgen.render(config, "params.yaml")


def test_dam_cnn_step_2_stage_reads_step_1_recipe(tmp_path):
    """Step 2 takes step 1's trunk keys, so a change to `models.vgg_serd` makes its stage
    stale through params too, not only through step 1's model.pt."""
    raw = tiny_config(tmp_path)
    raw["models"] = {"vgg_serd": {"width": 0.125, "input_size": 64}}
    raw["studies"][0]["models"] = ["vgg_serd", "damcnn"]
    stages = dvcgen.stages(config_mod.validate(raw), "params.yaml")
    params = {name: stage["params"][0]["params.yaml"] for name, stage in stages.items()
              if name.startswith("train_")}
    assert "models.vgg_serd" in params["train_synthetic_subject_5fold_damcnn"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A fresh copy of the project with the tiny study, reproduced once by `dvc repro` and
    committed to git (`dvc exp run` needs a commit); the tests below run in file order."""
    project = fresh_copy(tmp_path_factory.mktemp("clone"))
    write_config(project, tiny_config(Path("results")))
    run([str(BIN / "ferbench"), "dvc-yaml", "--config", str(STUDY_FILE)], project)
    run([str(BIN / "dvc"), "repro"], project, timeout=1200)
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "reproduced")
    return project


def git(project: Path, *args: str) -> str:
    return run(["git", "-c", "user.name=ferbench", "-c", "user.email=ferbench@localhost",
                *args], project)


def stale_stages(project: Path) -> set[str]:
    return set(json.loads(run([str(BIN / "dvc"), "status", "--json"], project)))


def test_dvc_repro_reproduces_the_study(project):
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
    assert "up to date" in run([str(BIN / "dvc"), "status"], project).lower()


def test_dvc_plots_render_training_curves_and_the_confusion_matrix(project):
    study = "synthetic/subject_5fold/deep_emotion"
    shown = json.loads(run([str(BIN / "dvc"), "plots", "show", "--json"], project))
    assert not shown.get("errors"), shown["errors"]
    plots = shown["data"]
    for curve, columns in dvcgen.CURVES.items():
        values = plots[f"{study}/{curve}"][0]["content"]["data"]["values"]
        lines = {}  # "fold0/history.csv::val_acc" -> its epochs
        for value in values:
            lines.setdefault(value["filename::field"], []).append(int(value["epoch"]))
        assert set(lines) == {f"fold{k}/history.csv::{c}"
                              for k in range(TINY_FOLDS) for c in columns}
        assert all(epochs == [1, 2] for epochs in lines.values()), lines  # tiny: 2 epochs
    confusion = plots[f"{study}/confusion"][0]["content"]["data"]["values"]
    tested = sum(len(pd.read_csv(project / f"results/{study}/fold{k}/predictions.csv"))
                 for k in range(TINY_FOLDS))
    assert len(confusion) == tested and {"label", "predicted"} <= set(confusion[0])
    assert {v["filename"] for v in confusion} == {f"fold{k}/predictions.csv"
                                                  for k in range(TINY_FOLDS)}
    run([str(BIN / "dvc"), "plots", "show", "-o", "plots"], project)
    assert "vega" in (project / "plots" / "index.html").read_text()


def test_dvc_commit_after_a_snakemake_run_writes_the_same_lock(project):
    """`make demo` runs Snakemake, then `dvc commit --force`: the lock equals dvc repro's."""
    reproduced = yaml.safe_load((project / "dvc.lock").read_text())
    (project / "dvc.lock").unlink()
    run([str(BIN / "dvc"), "commit", "--force", "--quiet"], project)
    assert yaml.safe_load((project / "dvc.lock").read_text()) == reproduced
    assert stale_stages(project) == set()


def test_dvc_status_names_exactly_the_stages_a_change_makes_stale(project):
    study_file = project / STUDY_FILE
    original = study_file.read_text()
    config = yaml.safe_load(original)
    config["models"]["deep_emotion"]["epochs"] = 3
    study_file.write_text(yaml.safe_dump(config, sort_keys=False))
    assert stale_stages(project) == {"train_synthetic_subject_5fold_deep_emotion"}
    study_file.write_text(original)

    code = project / "src" / "ferbench" / "evaluate.py"
    source = code.read_text()
    code.write_text(source + "\n# a change\n")
    assert stale_stages(project) == {"evaluate_synthetic_subject_5fold_deep_emotion"}
    code.write_text(source)
    assert stale_stages(project) == set()


def test_dvc_exp_run_sets_a_param_of_the_study_file(project):
    title = "exp-title-5"  # Hydra's override grammar: no spaces or quotes unquoted
    # The study file is DVC's params.yaml, as the demo's: `-S key=value` needs no file name.
    run([str(BIN / "dvc"), "exp", "run", "-S", f"report.title={title}"], project,
        timeout=600)
    assert title in (project / "results" / "report.html").read_text()
    shown = json.dumps(json.loads(run([str(BIN / "dvc"), "exp", "show", "--json"], project)))
    assert title in shown
    assert stale_stages(project) == set()


def test_dvc_remote_round_trips(project, tmp_path):
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
