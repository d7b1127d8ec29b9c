"""The model zoo as one real study: the E2-Capsnet ablation, DAM-CNN's two steps and
MobileNet-CL's two stages run through Snakemake on tiny settings, with their DAG edges.

The study runs one held-out fold: each fold adds a training and an evaluation job per
model, mostly process starts at these sizes. Its DAG is read with two folds, where an edge
from the wrong fold would show."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from tests.conftest import HELD_OUT, HELD_OUT_FOLDS, tiny_config, tiny_protocol
from tests.workflow_helpers import mlflow_client, mlflow_runs, run_snakemake, write_config

pytestmark = pytest.mark.slow(minutes=9)

#: E2-Capsnet Table 1's ablation, DAM-CNN's steps and MobileNet-CL, at sizes a CPU trains in
#: seconds (the capsule variants need a 2x2 VGG output: 64 px).
TINY_MODELS = {
    "vgg16": {"input_size": 32, "width": 1 / 16},
    "avggnet": {"input_size": 32, "width": 1 / 16},
    "capsnet": {"input_size": 28, "width": 1 / 16},
    "rccnet": {"input_size": 64, "width": 1 / 16},
    "e2capsnet": {"input_size": 64, "width": 1 / 16},
    "decapsnet": {"input_size": 64, "width": 1 / 16},
    "vgg_serd": {"input_size": 64, "width": 1 / 16},
    "damcnn": {"input_size": 64, "width": 1 / 16, "decoders": 2, "gender_bound": True},
    "mobilenet_cl": {"width": 0.25},
    "hog_svm": {"input_size": 32, "c_grid": [0.01, 1.0], "subject_folds": 2},
}
#: The vote of two of them, a network and the anchor, given the faces at the members'
#: one input size (32), so its vote is exactly their own predictions weighted by its shares
#: (chosen on the validation split).
ENSEMBLE = ["vgg16", "hog_svm"]
ZOO = [*TINY_MODELS, "ensemble"]
#: MobileNet-CL's two learning rates (Section 5): the pretraining stage's, the target's.
STAGE_LR = (0.01, 0.045)
DCGAN = 3  # DCGAN faces per class and fold, for decapsnet
#: The study runs tests.conftest.HELD_OUT (one fold); the DAG test two subject folds, where
#: an edge from the wrong fold shows.
DAG_FOLDS = 2
SUBJECT_FOLDS = {"kind": "subject_kfold", "folds": DAG_FOLDS, "val_fraction": 0.25}
STUDY = Path("synthetic/zoo")


def zoo_config(protocol: dict = HELD_OUT) -> dict:
    """The zoo on protocol `zoo`, the tiny study's own protocol with `protocol`'s keys."""
    config = tiny_config(Path("results"))
    synthetic = config["datasets"]["synthetic"]
    # Other identities (another seed) stand in for FER2013 as the pretraining dataset.
    config["datasets"]["pretrain"] = {**synthetic, "generate": {**synthetic["generate"],
                                                                "seed": 7}}
    tiny_protocol(config, "zoo", protocol)
    config["studies"] = [{"dataset": "synthetic", "protocol": "zoo",
                          "models": ZOO,
                          "hyperparameters": {"mobilenet_cl": {"lr": STAGE_LR[1]},
                                              "ensemble": {"members": ENSEMBLE,
                                                           "input_size": 32,
                                                           "vote": "validation"}},
                          "pretrain": {"dataset": "pretrain", "protocol": "zoo",
                                       "hyperparameters": {"mobilenet_cl": {"lr": STAGE_LR[0]}}}}]
    config["models"] = {name: {**sizes, "epochs": 1, "patience": 1, "batch_size": 16}
                        for name, sizes in TINY_MODELS.items()}
    config["dcgan"] = {"epochs": 1, "batch_size": 16, "width": 8, "samples_per_class": DCGAN}
    return config


def dag_edges(dot: str) -> list[tuple[str, str]]:
    """(parent, child) job labels of `snakemake --dag`. A label is the rule and the wildcards
    the job adds to its parents', e.g. "train model=damcnn" (dataset, protocol and fold come
    from its parent, step 1's training job)."""
    labels = {}
    for node, label in re.findall(r'^\s*(\d+)\[label = "([^"]*)"', dot, flags=re.M):
        labels[node] = " ".join(part.replace(": ", "=") for part in label.split("\\n"))
    return [(labels[a], labels[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", dot, flags=re.M)]


@pytest.fixture(scope="module")
def zoo_study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("zoo")
    write_config(workdir, zoo_config())
    run_snakemake(workdir, timeout=1500)
    return workdir / "results"


def test_dag_shows_the_two_step_and_two_stage_edges(tmp_path):
    write_config(tmp_path, zoo_config(SUBJECT_FOLDS))
    edges = dag_edges(run_snakemake(tmp_path, "--dag").stdout)
    # DAM-CNN step 1 -> step 2, once per fold.
    assert edges.count(("train model=vgg_serd", "train model=damcnn")) == DAG_FOLDS
    # MobileNet-CL's stage 1 (fold 0 on the pretraining dataset) -> every fold's stage 2,
    # whose wildcards all come from its parents.
    assert edges.count(("train model=mobilenet_cl", "train")) == DAG_FOLDS
    # The AU-attention models read the landmarks stage; models without attention do not.
    children = [child for parent, child in edges if parent.startswith("landmarks")]
    for model in ("e2capsnet", "decapsnet", "avggnet"):
        assert children.count(f"train model={model}") == DAG_FOLDS, model
    assert "train model=vgg16" not in children and "train model=rccnet" not in children
    # DE-Capsnet trains on its fold's DCGAN faces too.
    assert edges.count(("dcgan fold=0", "train model=decapsnet")) == 1
    assert [child for parent, child in edges if parent.startswith("dcgan")] == \
        ["train model=decapsnet"] * DAG_FOLDS
    # The ensemble's job of each fold waits for its members' jobs of that fold.
    for member in ENSEMBLE:
        edge = (f"train model={member}", "train model=ensemble")
        assert edges.count(edge) == DAG_FOLDS, member


def test_every_model_of_the_ablation_finished_its_folds(zoo_study):
    results = zoo_study
    report = (results / "report.html").read_text()
    for model in ZOO:
        summary = json.loads((results / STUDY / model /
                              "summary.json").read_text())
        assert len(summary["folds"]) == HELD_OUT_FOLDS, model
        assert 0.0 <= summary["accuracy_mean"] <= 1.0
        assert model in report
    parents, children = mlflow_runs(results)
    assert len(parents) == len(ZOO)
    n_train = {(run.data.params["model"], run.data.params["fold"]): int(run.data.params["n_train"])
               for run in children if run.data.params["dataset"] == "synthetic"}
    classes = len(summary["labels"])
    for fold in range(HELD_OUT_FOLDS):
        assert n_train["decapsnet", str(fold)] == n_train["e2capsnet", str(fold)] + DCGAN * classes
    # One fold run per model and fold, plus the pretraining stage's (never evaluated).
    assert len(children) == len(ZOO) * HELD_OUT_FOLDS + 1


def test_step_two_keeps_step_one_trunk_and_serd_frozen(zoo_study):
    results = zoo_study
    for fold in range(HELD_OUT_FOLDS):
        step1, step2 = (torch.load(results / STUDY / model / f"fold{fold}" /
                                   "model.pt", weights_only=True)["state_dict"]
                        for model in ("vgg_serd", "damcnn"))
        shared = [key for key in step1 if key.startswith(("trunk.", "serd."))]
        assert shared
        for key in shared:
            assert torch.equal(step1[key], step2[key]), key


def test_stage_two_starts_from_the_pretraining_stage(zoo_study):
    results = zoo_study
    stage1 = Path(results.name) / "pretrain/zoo/mobilenet_cl/fold0/model.pt"
    assert (results.parent / stage1).is_file()
    _, children = mlflow_runs(results)
    stage2 = [run for run in children if run.data.params["model"] == "mobilenet_cl"
              and run.data.params["dataset"] == "synthetic"]
    assert len(stage2) == HELD_OUT_FOLDS
    for run in stage2:
        assert run.data.params["init_from"] == str(stage1)
    # Each stage trains on its own recipe, and MLflow and the report say which.
    stage1_run, = [run for run in children if run.data.params["dataset"] == "pretrain"]
    assert [float(run.data.params["lr"]) for run in (stage1_run, *stage2)] == \
        [STAGE_LR[0]] + [STAGE_LR[1]] * HELD_OUT_FOLDS
    report = (results / "report.html").read_text()
    assert f"lr={STAGE_LR[1]}" in report.split("<h2>4. Recipes</h2>")[1]


def test_the_baseline_runs_like_any_model_and_the_report_flags_against_it(zoo_study):
    results = zoo_study
    _, children = mlflow_runs(results)
    client = mlflow_client(results)
    baseline = [run for run in children if run.data.params["model"] == "hog_svm"]
    assert len(baseline) == HELD_OUT_FOLDS
    assert all(r.info.status == "FINISHED" for r in baseline)
    for run in baseline:  # one logged "epoch" per C tried, on validation and 2 inner folds
        for metric in ("val_acc", "subject_folds_acc", "pooled_acc"):
            assert len(client.get_metric_history(run.info.run_id, metric)) == 2, metric
    summaries = {model: json.loads((results / STUDY / model /
                                    "summary.json").read_text()) for model in ZOO}
    from ferbench.report import clears

    flagged = [m for m in ZOO if m != "hog_svm"
               and not clears(summaries[m], summaries["hog_svm"])]
    report = (results / "report.html").read_text().split("<h2>2.")[0]
    assert report.count('class="badge no">does not clear hog_svm<') == len(flagged)


def test_the_ensemble_votes_with_its_members_probabilities(zoo_study):
    """Each fold's ensemble predictions are its members' test probabilities weighted by the
    shares its history chose on validation, and MLflow and the report say so."""
    import pandas as pd

    results = zoo_study
    study = results / STUDY
    for fold in range(HELD_OUT_FOLDS):
        members = [pd.read_csv(study / m / f"fold{fold}/predictions.csv") for m in ENSEMBLE]
        vote = pd.read_csv(study / f"ensemble/fold{fold}/predictions.csv")
        history = pd.read_csv(study / f"ensemble/fold{fold}/history.csv")
        assert len(history) == 12  # equal shares, then 0.0 to 1.0 in steps of 0.1
        chosen = history[history["chosen"]].iloc[0]
        columns = [c for c in vote.columns if c.startswith("p_")]
        weighted = sum(chosen[f"share_{m}"] * member[columns].to_numpy()
                       for m, member in zip(ENSEMBLE, members))
        assert abs(vote[columns].to_numpy() - weighted).max() < 1e-5
        assert (vote["uid"] == members[0]["uid"]).all()
    _, children = mlflow_runs(results)
    runs = [run for run in children if run.data.params["model"] == "ensemble"]
    assert len(runs) == HELD_OUT_FOLDS
    start = "the vote of " + ", ".join(ENSEMBLE)
    assert all(run.data.params["start"].startswith(start) for run in runs)
    report = (results / "report.html").read_text()
    assert start in report and "The vote&#x27;s share of each member per fold" in report
