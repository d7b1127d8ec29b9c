import pytest
import yaml

from ferbench import config as config_mod
from tests.conftest import ROOT, tiny_config


def test_default_config_validates_and_fills_defaults():
    config = config_mod.load(ROOT / "config" / "config.yaml")
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
    """config/config.yaml documents each top-level block in a comment above it."""
    lines = (ROOT / "config" / "config.yaml").read_text().splitlines()
    for key in yaml.safe_load("\n".join(lines)):
        at = next(i for i, line in enumerate(lines) if line.startswith(f"{key}:"))
        assert lines[at - 1].startswith("#"), f"top-level key {key!r} has no comment above it"
