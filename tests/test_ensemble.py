"""The soft-voting ensemble: its vote is the members' mean probability, its recipe holds
theirs, its model.pt stands alone, and a config it cannot honour names the key."""

from __future__ import annotations

import pytest
import torch

from ferbench import config as config_mod
from ferbench import jobs
from ferbench.models import get
from ferbench.models.ensemble import load_members
from tests.conftest import TINY_FOLDS, tiny_config

LABELS = ["anger", "happiness", "surprise"]
#: Two members a CPU builds in milliseconds, at one input size.
MEMBERS = {"vgg16": {"input_size": 32, "width": 1 / 16}, "deepfer": {"input_size": 32}}


def study_config(tmp_path, ensemble: dict, members=MEMBERS) -> dict:
    raw = tiny_config(tmp_path)
    raw["studies"][0]["models"] = [*members, "ensemble"]
    raw["studies"][0]["hyperparameters"] = {**members, "ensemble": ensemble}
    return raw


def built_members(tmp_path, seed: int = 0) -> tuple[dict, list]:
    """The ensemble's recipe, at its members' input size, and one trained-like model.pt per
    member (random weights)."""
    config = config_mod.validate(study_config(tmp_path, {"members": list(MEMBERS),
                                                         "input_size": 32}))
    recipe = config_mod.recipe(config, "synthetic", "subject_5fold", "ensemble")
    files = []
    for name in MEMBERS:
        torch.manual_seed(seed)
        member = get(name).build(len(LABELS), recipe["member_recipes"][name])
        files.append(jobs.save_model(tmp_path / name / "model.pt", name, LABELS,
                                     recipe["member_recipes"][name], member.state_dict(), {}))
    return recipe, files


def test_the_vote_is_the_members_mean_probability(tmp_path, one_thread):
    recipe, files = built_members(tmp_path)
    ensemble = get("ensemble").build(len(LABELS), recipe)
    load_members(ensemble, {**recipe, "members_from": files}, LABELS)
    x = torch.rand(5, 1, 32, 32) * 2 - 1
    members = [jobs.load_model(path)[0] for path in files]
    expected = sum(torch.softmax(member(x), 1) for member in members) / len(members)
    with torch.no_grad():
        vote = torch.softmax(ensemble.eval()(x), 1)
    assert torch.allclose(vote, expected, atol=1e-6)
    # Neither member alone gives it: the mean is of two different models.
    assert not torch.allclose(vote, torch.softmax(members[0](x), 1), atol=1e-3)


def test_members_of_other_sizes_see_the_faces_as_their_own_jobs_resize_them(tmp_path,
                                                                           one_thread):
    """Faces at 40 px: one member takes them at 32 (area), the other at 48 (bicubic),
    each from the crop, as Split.from_arrays gives them to the member's own job."""
    from ferbench.train import Split, as_input

    config = config_mod.validate(study_config(
        tmp_path, {"members": list(MEMBERS), "input_size": 40},
        {"vgg16": MEMBERS["vgg16"], "deepfer": {"input_size": 48}}))
    recipe = config_mod.recipe(config, "synthetic", "subject_5fold", "ensemble")
    torch.manual_seed(0)
    ensemble = get("ensemble").build(len(LABELS), recipe).eval()
    assert ensemble.sizes == {"vgg16": 32, "deepfer": 48} and recipe["input_size"] == 40
    faces = torch.randint(0, 256, (6, 1, 40, 40), dtype=torch.uint8).numpy()
    with torch.no_grad():
        own = [torch.softmax(member(as_input(Split.from_arrays(faces, [0] * 6, side).images,
                                             torch.device("cpu"))), 1)
               for member, side in zip(ensemble.members.values(), ensemble.sizes.values())]
        vote = torch.softmax(ensemble(as_input(torch.from_numpy(faces), torch.device("cpu"))), 1)
    assert torch.allclose(vote, sum(own) / 2, atol=2e-3)


def test_a_saved_ensemble_rebuilds_without_its_members_files(tmp_path, one_thread):
    recipe, files = built_members(tmp_path)
    ensemble = get("ensemble").build(len(LABELS), recipe)
    load_members(ensemble, {**recipe, "members_from": files}, LABELS)
    saved = jobs.save_model(tmp_path / "ensemble.pt", "ensemble", LABELS, recipe,
                            ensemble.state_dict(), {})
    for path in files:
        path.unlink()
    restored, record = jobs.load_model(saved)
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(restored(x), ensemble.eval()(x))
    assert record["input_size"] == 32


@pytest.mark.parametrize("vote", ["mean", "validation"])
def test_the_vote_shares_are_equal_or_chosen_on_validation(tmp_path, one_thread, vote):
    """On validation faces that deepfer gets all right and vgg16 calls anger with confidence,
    `vote: validation` gives deepfer the larger share; `vote: mean` keeps equal shares,
    and vgg16 outvotes it. The shares travel with model.pt."""
    from ferbench import train

    recipe, files = built_members(tmp_path)
    ensemble = get("ensemble").build(len(LABELS), {**recipe, "vote": vote})
    load_members(ensemble, {**recipe, "members_from": files}, LABELS)
    last = [m for m in ensemble.members["vgg16"].modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([8.0, 0.0, 0.0]))  # anger, whatever the face
    faces = torch.randint(0, 256, (40, 32, 32), dtype=torch.uint8).numpy()
    x = train.as_input(torch.from_numpy(faces)[:, None], torch.device("cpu"))
    with torch.no_grad():
        probs = ensemble.eval().member_log_probabilities(x).exp()
    right = probs[1].argmax(1)  # deepfer is right on every face
    assert (right != 0).any()  # and not anger on all of them
    val = train.Split.from_arrays(faces, right.numpy(), 32)
    history, state, _ = train.fit_closed_form(ensemble, val, val, seed=0)
    assert len(history) == (1 if vote == "mean" else 1 + 11)  # equal, then 0.0 to 1.0
    chosen = history[history["chosen"]].iloc[0]
    equal = history.iloc[0]
    assert equal["share_vgg16"] == equal["share_deepfer"] == 0.5
    if vote == "mean":
        assert chosen["epoch"] == 1 and torch.equal(ensemble.shares, torch.tensor([0.5, 0.5]))
    else:
        assert chosen["val_acc"] == 1.0 > equal["val_acc"]
        assert chosen["share_deepfer"] > 0.5 and ensemble.shares.sum().item() == pytest.approx(1)
    weighted = torch.einsum("m,mbk->bk", ensemble.shares, probs)
    with torch.no_grad():
        assert torch.allclose(torch.softmax(ensemble(x), 1), weighted, atol=1e-6)
    saved = jobs.save_model(tmp_path / "ensemble.pt", "ensemble", LABELS,
                            {**recipe, "vote": vote}, state, {})
    assert torch.equal(jobs.load_model(saved)[0].shares, ensemble.shares)


@pytest.mark.parametrize("model, labels", [("deepfer", LABELS), ("vgg16", LABELS[:2])])
def test_a_members_file_of_another_model_or_classes_is_refused(tmp_path, model, labels):
    recipe, files = built_members(tmp_path)
    member = get(model).build(len(labels), recipe["member_recipes"][model])
    files[0] = jobs.save_model(tmp_path / "other.pt", model, labels,
                               recipe["member_recipes"][model], member.state_dict(), {})
    ensemble = get("ensemble").build(len(LABELS), recipe)
    with pytest.raises(ValueError, match="not the member vgg16"):
        load_members(ensemble, {**recipe, "members_from": files}, LABELS)


def test_the_recipe_holds_each_members_own_recipe(tmp_path):
    config = config_mod.validate(study_config(tmp_path, {"members": list(MEMBERS),
                                                         "test_flip": True}))
    recipe = config_mod.recipe(config, "synthetic", "subject_5fold", "ensemble")
    for name in MEMBERS:
        assert recipe["member_recipes"][name] == config_mod.recipe(
            config, "synthetic", "subject_5fold", name)
    # Given the faces at their crop size; each member resizes them to its own.
    assert recipe["input_size"] == config["datasets"]["synthetic"]["faces"]["size"]
    assert recipe["test_flip"] and recipe["epochs"] == 0


@pytest.mark.parametrize("ensemble, members, message", [
    ({"members": ["vgg16"]}, MEMBERS, "needs two or more members"),
    ({"members": ["vgg16", "mobilenet_cl"]}, MEMBERS, "'mobilenet_cl' is not a member"),
    ({"members": ["vgg16", "avggnet"]}, {**MEMBERS, "avggnet": {"input_size": 32}},
     "'avggnet' is not a member"),  # its AU attention channel is an input of its own
    ({"members": list(MEMBERS), "member_recipes": {}}, MEMBERS, "ensemble.member_recipes"),
    ({"members": list(MEMBERS), "members_from": ["a.pt", "b.pt"]}, MEMBERS,
     "ensemble.members_from"),
    ({"members": list(MEMBERS), "vote": "median"}, MEMBERS, "ensemble.vote': one of mean"),
    ({"members": list(MEMBERS), "vote_step": 0}, MEMBERS, "ensemble.vote_step'"),
])
def test_an_ensemble_it_cannot_build_names_the_key(tmp_path, ensemble, members, message):
    with pytest.raises(config_mod.ConfigError, match=message) as err:
        config_mod.validate(study_config(tmp_path, ensemble, members))
    assert "config key 'studies.0.hyperparameters.ensemble" in str(err.value)


def test_the_dvc_stage_reads_the_members_weights_and_recipes(tmp_path):
    """A retrained member, or a change to its recipe, makes the ensemble's stage stale."""
    from ferbench import dvcgen, paths

    raw = study_config(tmp_path, {"members": list(MEMBERS)})
    raw["models"] = raw["studies"][0]["hyperparameters"]  # the members' blocks made global
    raw["studies"][0]["hyperparameters"] = {}
    config = config_mod.validate(raw)
    stage = dvcgen.stages(config, "params.yaml")["train_synthetic_subject_5fold_ensemble"]
    for name in MEMBERS:
        assert f"models.{name}" in stage["params"][0]["params.yaml"]
        for fold in range(TINY_FOLDS):
            assert paths.fill(paths.MODEL, config, dataset="synthetic",
                              protocol="subject_5fold", model=name, fold=fold) in stage["deps"]
