import pytest
import torch
import yaml

from ferbench import config as config_mod
from tests.conftest import ROOT, tiny_config


def test_default_config_validates_and_fills_defaults():
    config = config_mod.load(ROOT / "params.yaml")
    assert config["mlflow"]["experiment"] == "ferbench"
    assert config["protocols"]["subject_5fold"]["folds"] == 5
    assert config["datasets"]["synthetic"]["faces"]["detector"] == "haar"


def test_defaults_are_filled_for_omitted_blocks(tmp_path):
    raw = tiny_config(tmp_path)
    del raw["augment"], raw["datasets"]["synthetic"]["faces"]
    config = config_mod.validate(raw)
    assert config["augment"]["copies"] == 3
    assert config["datasets"]["synthetic"]["faces"]["miss_policy"] == "full-image"


@pytest.mark.parametrize("mutate, key", [
    (lambda c: c["models"]["deep_emotion"].update(lr=-1), "models.deep_emotion.lr"),
    (lambda c: c["protocols"]["subject_5fold"].update(folds=1), "protocols.subject_5fold.folds"),
    (lambda c: c["datasets"]["synthetic"].update(source="ftp"), "datasets.synthetic.source"),
    (lambda c: c.update(sede=1), "<top level>"),
    (lambda c: c["studies"][0].update(models=["resnet"]), "studies.0.models.0"),
    (lambda c: c["studies"][0].update(dataset="ckplus"), "studies.0.dataset"),
    (lambda c: c["datasets"]["synthetic"].update(source="path"), "datasets.synthetic"),
])
def test_bad_config_names_the_key(tmp_path, mutate, key):
    raw = tiny_config(tmp_path)
    mutate(raw)
    with pytest.raises(config_mod.ConfigError) as err:
        config_mod.validate(raw)
    assert f"config key '{key}'" in str(err.value)


def test_unreadable_yaml_is_a_config_error(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("datasets: [unclosed\n")
    with pytest.raises(config_mod.ConfigError, match="not valid YAML"):
        config_mod.load(bad)


def test_every_config_key_is_explained_by_a_comment():
    """params.yaml documents each top-level block in a comment above it."""
    lines = (ROOT / "params.yaml").read_text().splitlines()
    for key in yaml.safe_load("\n".join(lines)):
        at = next(i for i, line in enumerate(lines) if line.startswith(f"{key}:"))
        assert lines[at - 1].startswith("#"), f"top-level key {key!r} has no comment above it"


def _validated_protocol(tmp_path, block):
    raw = tiny_config(tmp_path)
    raw["protocols"]["p"] = block
    return config_mod.validate(raw)["protocols"]["p"]


@pytest.mark.parametrize("block, filled", [
    ({"kind": "subject_kfold"},
     {"folds": 5, "val_fraction": 0.2, "class_set": "7", "frames": "all"}),
    ({"kind": "image_kfold", "folds": 10}, {"folds": 10, "val_fraction": 0.2}),
    ({"kind": "loso", "folds": 10}, {"folds": 10, "val_fraction": 0.2}),
    ({"kind": "predefined", "train": ["Training"], "test": ["PrivateTest"]},
     {"val": [], "val_fraction": 0.2}),
    ({"kind": "held_out", "test_subjects": ["mery", "ray"]},
     {"val_subjects": [], "val_fraction": 0.2}),
    ({"kind": "balanced", "train_splits": ["Training"], "test_splits": ["PublicTest"]},
     {"per_class": {"train": 400, "val": 30, "test": 100}, "class_set": "7"}),
])
def test_each_protocol_kind_validates_with_its_defaults(tmp_path, block, filled):
    protocol = _validated_protocol(tmp_path, block)
    assert protocol.items() >= {**block, **filled}.items()


@pytest.mark.parametrize("block, message", [
    ({"kind": "subject_kfold", "fold": 5}, "('fold' was unexpected)"),
    ({"kind": "predefined", "train": ["a"], "test": ["b"], "folds": 3}, "('folds' was unexpected)"),
    ({"kind": "balanced", "train_splits": ["a"], "test_splits": ["b"], "val_fraction": 0.1},
     "('val_fraction' was unexpected)"),
    ({"kind": "loso"}, "'folds' is a required property"),
    ({"kind": "held_out"}, "'test_subjects' is a required property"),
])
def test_a_key_foreign_to_the_protocol_kind_names_itself(tmp_path, block, message):
    with pytest.raises(config_mod.ConfigError) as err:
        _validated_protocol(tmp_path, block)
    assert "config key 'protocols.p'" in str(err.value) and message in str(err.value)


def test_an_unknown_protocol_kind_names_the_kind_key(tmp_path):
    with pytest.raises(config_mod.ConfigError, match="config key 'protocols.p.kind': 'leaky'"):
        _validated_protocol(tmp_path, {"kind": "leaky", "folds": 3})


def test_balanced_per_class_keys_are_checked(tmp_path):
    block = {"kind": "balanced", "train_splits": ["a"], "test_splits": ["b"],
             "per_class": {"train": 400, "tset": 100}}
    with pytest.raises(config_mod.ConfigError,
                       match=r"config key 'protocols.p.per_class': .*'tset' was unexpected"):
        _validated_protocol(tmp_path, block)


def test_a_model_hyperparameter_typo_names_the_key(tmp_path):
    raw = tiny_config(tmp_path)
    raw["models"]["deep_emotion"]["learning_rate"] = 0.1
    with pytest.raises(config_mod.ConfigError) as err:
        config_mod.validate(raw)
    assert "config key 'models.deep_emotion.learning_rate'" in str(err.value)
    assert "lr" in str(err.value)  # the message lists the real names


def test_input_size_is_a_hyperparameter_the_model_honours():
    from ferbench.models import get

    spec = get("deepfer")
    hp = spec.hyperparameters({"input_size": 32, "width": 0.25})
    model = spec.build(7, hp)
    assert spec.input_size(hp) == 32 and spec.input_size() == 48
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 7)


def test_cross_dataset_protocol_must_name_another_defined_dataset(tmp_path):
    raw = tiny_config(tmp_path)
    raw["protocols"]["cross"] = {"kind": "cross_dataset", "test_dataset": "nowhere"}
    with pytest.raises(config_mod.ConfigError, match="'protocols.cross.test_dataset'"):
        config_mod.validate(raw)
    raw["protocols"]["cross"]["test_dataset"] = "synthetic"
    raw["studies"].append({"dataset": "synthetic", "protocol": "cross", "models": ["deepfer"]})
    with pytest.raises(config_mod.ConfigError, match="'studies.1.protocol'.*own dataset"):
        config_mod.validate(raw)


@pytest.mark.parametrize("pretrain, models, message", [
    ({"dataset": "fer2013", "protocol": "subject_5fold"}, ["mobilenet_cl"],
     "'studies.0.pretrain.dataset': unknown dataset 'fer2013'"),
    ({"dataset": "synthetic", "protocol": "subject_5fold"}, ["mobilenet_cl"],
     "'studies.0.pretrain': a study cannot pretrain on its own"),
    ({"dataset": "other", "protocol": "subject_5fold"}, ["deep_emotion"],
     "'studies.0.pretrain': none of deep_emotion can start .*mobilenet_cl"),
    ({"dataset": "other"}, ["mobilenet_cl"], "'studies.0.pretrain'"),
])
def test_a_pretraining_stage_is_checked(tmp_path, pretrain, models, message):
    raw = tiny_config(tmp_path)
    raw["datasets"]["other"] = raw["datasets"]["synthetic"]
    raw["studies"][0].update(pretrain=pretrain, models=models)
    with pytest.raises(config_mod.ConfigError, match=message):
        config_mod.validate(raw)
    raw["studies"][0]["pretrain"] = {"dataset": "other", "protocol": "subject_5fold"}
    raw["studies"][0]["models"] = ["mobilenet_cl"]
    assert config_mod.validate(raw)["studies"][0]["pretrain"]["dataset"] == "other"


def _two_stage_config(tmp_path) -> dict:
    """MobileNet-CL's two stages as the paper trains them: lr 0.01 on the first dataset,
    0.045 on the target (Section 5), every other key from the global block or the paper."""
    raw = tiny_config(tmp_path)
    raw["datasets"]["other"] = raw["datasets"]["synthetic"]
    raw["models"] = {"mobilenet_cl": {"epochs": 3, "width": 0.25}}
    raw["studies"] = [{"dataset": "synthetic", "protocol": "subject_5fold",
                       "models": ["mobilenet_cl"],
                       "hyperparameters": {"mobilenet_cl": {"lr": 0.045}},
                       "pretrain": {"dataset": "other", "protocol": "subject_5fold",
                                    "hyperparameters": {"mobilenet_cl": {"lr": 0.01}}}}]
    return raw


def test_each_training_resolves_its_own_recipe(tmp_path):
    from ferbench.models import get

    config = config_mod.validate(_two_stage_config(tmp_path))
    target = config_mod.recipe(config, "synthetic", "subject_5fold", "mobilenet_cl")
    stage1 = config_mod.recipe(config, "other", "subject_5fold", "mobilenet_cl")
    paper = get("mobilenet_cl").defaults
    assert (target["lr"], stage1["lr"]) == (0.045, 0.01)
    assert target["epochs"] == stage1["epochs"] == 3  # the global block, under the study's
    assert target["lr_decay"] == paper["lr_decay"] and target["batch_size"] == paper["batch_size"]
    # A model no block names gets exactly its paper defaults.
    assert config_mod.recipe(config, "synthetic", "subject_5fold", "deepfer") == \
        get("deepfer").hyperparameters()


def test_a_study_block_typo_names_its_key(tmp_path):
    raw = _two_stage_config(tmp_path)
    raw["studies"][0]["hyperparameters"]["mobilenet_cl"]["learning_rate"] = 0.1
    with pytest.raises(config_mod.ConfigError,
                       match=r"'studies.0.hyperparameters.mobilenet_cl.learning_rate'"):
        config_mod.validate(raw)
    raw = _two_stage_config(tmp_path)
    raw["studies"][0]["pretrain"]["hyperparameters"] = {"nonet": {"lr": 0.1}}
    with pytest.raises(config_mod.ConfigError,
                       match=r"'studies.0.pretrain.hyperparameters.nonet': unknown model"):
        config_mod.validate(raw)


def test_one_training_cannot_have_two_recipes(tmp_path):
    raw = _two_stage_config(tmp_path)
    raw["studies"].append({"dataset": "other", "protocol": "subject_5fold",
                           "models": ["mobilenet_cl"],
                           "hyperparameters": {"mobilenet_cl": {"lr": 0.02}}})
    with pytest.raises(config_mod.ConfigError, match=r"'studies.1.hyperparameters.mobilenet_cl'"
                       r".*already has other hyperparameters at 'studies.0.pretrain"):
        config_mod.validate(raw)


def _dam_cnn_config(tmp_path, **damcnn) -> dict:
    raw = tiny_config(tmp_path)
    raw["models"] = {"vgg_serd": {"width": 0.125, "input_size": 64}}
    raw["studies"][0].update(models=["vgg_serd", "damcnn"], hyperparameters={
        "vgg_serd": {"batch_norm": True}, "damcnn": {"decoders": 2, **damcnn}})
    return raw


def test_dam_cnn_step_2_builds_the_trunk_step_1_trained(tmp_path):
    """Step 2 loads step 1's trunk: it takes that recipe's trunk keys, from whichever layer
    (global block, study block) set them, and keeps its own other keys."""
    config = config_mod.validate(_dam_cnn_config(tmp_path))
    step2 = config_mod.recipe(config, "synthetic", "subject_5fold", "damcnn")
    assert (step2["width"], step2["input_size"], step2["batch_norm"]) == (0.125, 64, True)
    assert step2["decoders"] == 2
    # The same value written out again is allowed.
    config_mod.validate(_dam_cnn_config(tmp_path, width=0.125))


def test_a_step_2_trunk_key_that_disagrees_with_step_1_names_itself(tmp_path):
    with pytest.raises(config_mod.ConfigError,
                       match=r"'studies.0.hyperparameters.damcnn.batch_norm': damcnn builds "
                             r"the trunk vgg_serd trained, whose batch_norm is True"):
        config_mod.validate(_dam_cnn_config(tmp_path, batch_norm=False))
    raw = _dam_cnn_config(tmp_path)
    raw["models"]["damcnn"] = {"input_size": 224}
    with pytest.raises(config_mod.ConfigError, match=r"'models.damcnn.input_size'"):
        config_mod.validate(raw)


def test_a_study_file_is_the_whole_study(tmp_path):
    """Nothing of the demo reaches a study that leaves keys out: they take the schema's
    defaults (the demo's augment.copies is 2, the schema's 3; the demo trains deepfer)."""
    raw = tiny_config(tmp_path)
    del raw["models"], raw["augment"]
    config = config_mod.validate(raw)
    assert config["models"] == {} and config["augment"]["copies"] == 3
    assert list(config["datasets"]) == ["synthetic"]


def test_a_shrunk_search_is_haar_only(tmp_path):
    raw = tiny_config(tmp_path)
    raw["datasets"]["synthetic"]["faces"] = {"detector": "haar", "detect_scale": 0.5}
    assert config_mod.validate(raw)["datasets"]["synthetic"]["faces"]["detect_scale"] == 0.5
    raw["datasets"]["synthetic"]["faces"]["detector"] = "mediapipe"
    with pytest.raises(config_mod.ConfigError,
                       match="'datasets.synthetic.faces.detect_scale': Haar only"):
        config_mod.validate(raw)
    raw["datasets"]["synthetic"]["faces"] = {"detect_scale": 0}
    with pytest.raises(config_mod.ConfigError, match="'datasets.synthetic.faces.detect_scale'"):
        config_mod.validate(raw)
