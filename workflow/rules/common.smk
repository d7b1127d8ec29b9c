# Shared by every rule: the validated config and the path templates of ferbench.paths.
from ferbench import config as ferbench_config
from ferbench import paths, splits
from snakemake.exceptions import WorkflowError
from snakemake.settings.types import DeploymentMethod

if not config:
    raise WorkflowError(
        "no study config: run with --configfile params.yaml (the demo) or "
        "--configfile my-study.yaml (config/README.md)"
    )
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


def train_extras(wildcards):
    """A training job's inputs beyond its fold's faces (paths.training_inputs): the model's
    channels, the weights it starts from (DAG edges), genders, DCGAN faces."""
    return paths.training_inputs(
        config, wildcards.dataset, wildcards.protocol, wildcards.model, wildcards.fold
    )


def evaluate_extras(wildcards):
    """What the model reads beside the tested dataset's faces (its AU maps' landmarks)."""
    tested = paths.test_dataset(config, wildcards.dataset, wildcards.protocol)
    return paths.model_inputs(config, tested, wildcards.model)


def fold_numbers(protocol):
    return range(splits.fold_count(config["protocols"][protocol]))


def each_fold(template, wildcards, **fixed):
    """`template` filled for every fold of the wildcards' protocol, in fold order."""
    return [
        path(template, **{**dict(wildcards.items()), **fixed, "fold": k})
        for k in fold_numbers(wildcards.protocol)
    ]


def report_outputs():
    return [path(paths.REPORT), path(paths.STUDY_METRICS)]


def recipe(wildcards):
    """A training job's effective hyperparameters (ferbench.config.recipe)."""
    return ferbench_config.recipe(
        config, wildcards.dataset, wildcards.protocol, wildcards.model
    )


def compared_models(wildcards):
    """The models studied on this (dataset, protocol), in config order."""
    return paths.study_models(config)[(wildcards.dataset, wildcards.protocol)]


def compared_summaries(wildcards):
    return [
        path(
            paths.SUMMARY,
            dataset=wildcards.dataset,
            protocol=wildcards.protocol,
            model=m,
        )
        for m in compared_models(wildcards)
    ]


def compared_predictions(wildcards):
    """Every fold's test predictions of every compared model, model by model."""
    return [
        predictions
        for m in compared_models(wildcards)
        for predictions in each_fold(paths.PREDICTIONS, wildcards, model=m)
    ]


def dedupe_arrays(wildcards):
    """With `dedupe: drop`, the folds stage reads the trained and tested faces to hash."""
    if config["protocols"][wildcards.protocol]["dedupe"] != "drop":
        return {}
    return {
        "dedupe_trained": path(paths.FACES_ARRAY, dataset=wildcards.dataset),
        "dedupe_tested": tested_faces_array(wildcards),
    }


def mediapipe_detections(wildcards):
    """mediapipe_detect's faces, for a dataset whose face stage uses BlazeFace."""
    if dataset_config(wildcards)["faces"]["detector"] != "mediapipe":
        return []
    return path(paths.MEDIAPIPE_DETECTIONS, dataset=wildcards.dataset)


def dataset_root(wildcards, input):
    return paths.dataset_root(dataset_config(wildcards), input.get("raw"))


def mediapipe_python(wildcards):
    """The rule's conda environment under --use-conda / --sdm conda, else .venv-mediapipe."""
    if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
        return "python"
    return str(mediapipe_client.interpreter())
