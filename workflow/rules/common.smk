# Shared by every rule: the validated config and the path templates of ferbench.paths.
from ferbench import config as ferbench_config
from ferbench import models, paths, splits

config.update(ferbench_config.validate(config))
RESULTS = config["results"]


wildcard_constraints:
    dataset="[^/]+",
    protocol="[^/]+",
    model="[^/]+",
    fold=r"\d+",


def path(template, **wildcards):
    """A ferbench.paths template with the results folder filled in."""
    return paths.fill(template, config, **wildcards)


def log_path(rule_name, name):
    return path(paths.LOG, rule=rule_name, name=name)


def benchmark_path(rule_name, name):
    return path(paths.BENCHMARK, rule=rule_name, name=name)


def dataset_config(wildcards):
    return config["datasets"][wildcards.dataset]


def raw_input(wildcards):
    """The fetched raw folder, unless the dataset is a local copy given by `path:`."""
    if dataset_config(wildcards)["source"] == "path":
        return []
    return path(paths.RAW, dataset=wildcards.dataset)


def tested_faces_array(wildcards):
    """Faces a study is tested on: its own, or a cross-dataset protocol's test_dataset."""
    tested = paths.test_dataset(config, wildcards.dataset, wildcards.protocol)
    return path(paths.FACES_ARRAY, dataset=tested)


def cross_dataset_faces_table(wildcards):
    """The test dataset's face table for a cross-dataset protocol; nothing otherwise."""
    tested = paths.test_dataset(config, wildcards.dataset, wildcards.protocol)
    return (
        [] if tested == wildcards.dataset else path(paths.FACES_TABLE, dataset=tested)
    )


def model_extras(wildcards, dataset):
    """Named inputs a model needs beyond the faces: the landmarks its AU attention channel
    is drawn from, on `dataset` (the one trained or tested on)."""
    if models.get(wildcards.model).extra_channels:
        return {"landmarks": path(paths.LANDMARKS_ARRAY, dataset=dataset)}
    return {}


def train_extras(wildcards):
    """A training job's extra inputs: its model's channels, the weights it starts from
    (step 1's model.pt of the same fold, or the pretraining stage's), the face table when
    gender-bound decoders need each face's gender, and the fold's DCGAN faces for models
    trained on them."""
    extras = model_extras(wildcards, wildcards.dataset)
    hyperparameters = models.get(wildcards.model).hyperparameters(
        config["models"].get(wildcards.model)
    )
    if hyperparameters.get("gender_bound"):  # DAM-CNN-g reads each face's gender
        extras["faces_table"] = path(paths.FACES_TABLE, dataset=wildcards.dataset)
    if models.get(wildcards.model).trains_on_dcgan:
        extras["dcgan_array"] = path(paths.DCGAN_ARRAY)
        extras["dcgan_table"] = path(paths.DCGAN_TABLE)
    init = paths.initial_weights(
        config, wildcards.dataset, wildcards.protocol, wildcards.model
    )
    if init:
        extras["init"] = init.format(fold=wildcards.fold)
    return extras


def evaluate_extras(wildcards):
    tested = paths.test_dataset(config, wildcards.dataset, wildcards.protocol)
    return model_extras(wildcards, tested)


def fold_numbers(protocol):
    return range(splits.fold_count(config["protocols"][protocol]))


def report_outputs():
    return [path(paths.REPORT), path(paths.STUDY_METRICS)]
