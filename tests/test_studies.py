"""The committed study files of the licensed datasets: each validates as it stands, names
its datasets after their adapters, and takes a user's copy from the command line alone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ferbench import config as config_mod
from ferbench import paths
from tests.conftest import ROOT
from tests.workflow_helpers import run_snakemake

STUDIES = sorted((ROOT / "config" / "studies").rglob("*.yaml"))


def test_every_licensed_dataset_has_a_cpu_and_a_gpu_study():
    names = {path.relative_to(ROOT / "config" / "studies").as_posix() for path in STUDIES}
    for dataset in ("jaffe", "ckplus48", "ckplus", "fer2013"):
        assert {f"{dataset}.yaml", f"gpu/{dataset}.yaml"} <= names, dataset
    for path in STUDIES:
        device = config_mod.load(path)["device"]
        assert device == ("cuda" if path.parent.name == "gpu" else "auto"), path


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_a_study_file_validates_and_names_datasets_after_adapters(path):
    config = config_mod.load(path)
    for name, dataset in config["datasets"].items():
        assert name == dataset["adapter"] and dataset["source"] == "path", name
    # Every model of every study is trained on every fold, with a recipe that resolves.
    for study in paths.studies(config):
        config_mod.recipe(config, study.dataset, study.protocol, study.model)
    models = {model for entry in config["studies"] for model in entry["models"]}
    assert "hog_svm" in models  # the anchor every deep model must beat


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_model_of_a_study_is_tested_alike_and_the_anchor_picks_c_on_subjects(path):
    """Within a study every model sees its test faces the same way (each with its mirror, or
    none does), and where the faces have subjects the anchor picks its C on subject folds of
    its training faces too, not on the few validation subjects alone (on JAFFE: 62.0 ->
    65.8, docs/jaffe.md)."""
    config = config_mod.load(path)
    for entry in config["studies"]:
        recipes = {model: config_mod.recipe(config, entry["dataset"], entry["protocol"], model)
                   for model in entry["models"]}
        flips = {model: recipe.get("test_flip", False) for model, recipe in recipes.items()}
        assert len(set(flips.values())) == 1, (entry["protocol"], flips)
        if config["protocols"][entry["protocol"]]["kind"] != "predefined":
            assert recipes["hog_svm"]["subject_folds"], entry["protocol"]


@pytest.mark.slow(minutes=1)
@pytest.mark.parametrize("name", ["jaffe", "ckplus48"])
def test_a_copy_is_pointed_at_from_the_command_line(tmp_path, name):
    """`--config "datasets={NAME: {path: ...}}" results=...` is all a user edits: the DAG
    reads the copy and writes under the given results folder."""
    copy, results = tmp_path / "my-copy", tmp_path / "elsewhere"
    copy.mkdir()
    study = ROOT / "config" / "studies" / f"{name}.yaml"
    config = config_mod.load(study)
    dry = run_snakemake(tmp_path, "-n", "--configfile", str(study), "--config",
                        f"datasets={{{name}: {{path: {copy}}}}}", f"results={results}")
    out = dry.stdout + dry.stderr
    jobs = int(re.search(r"^train\s+(\d+)$", out, re.MULTILINE).group(1))
    folds = sum(s.folds for s in paths.studies(config))
    assert jobs >= folds  # every (model, fold), plus any step 1 it starts from
    assert str(results) in out and str(copy) not in str(config)
