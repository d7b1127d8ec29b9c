"""Generate `dvc.yaml` from the study config and the path templates of `ferbench.paths`.

There is one DAG: Snakemake's. Each DVC stage delegates to Snakemake for its targets, and
its deps/outs/params are computed from the same templates the rules use, so the two cannot
drift (`ferbench dvc-yaml --check` and the test suite prove the committed file is current).
Top-level `plots:` point `dvc plots show` / `diff` at each study's per-fold training curves
(history.csv, epoch on x) and its confusion matrix pooled over the folds' predictions.
`--rerun-triggers input params` keeps Snakemake from rebuilding upstream stages just because
DVC restored their files with new modification times.
"""

from __future__ import annotations

import yaml

from ferbench import paths, splits

CODE = {
    "fetch": ["src/ferbench/data", "workflow/scripts/fetch.py"],
    "ingest": ["src/ferbench/data", "workflow/scripts/ingest.py"],
    "mediapipe_detect": ["src/ferbench/mediapipe_worker.py", "workflow/envs/mediapipe.yaml",
                         "workflow/envs/mediapipe-requirements.txt"],
    "faces": ["src/ferbench/faces.py", "src/ferbench/mediapipe_client.py",
              "src/ferbench/mediapipe_worker.py", "workflow/scripts/faces.py"],
    "landmarks": ["src/ferbench/landmarks.py", "src/ferbench/data/images.py",
                  "src/ferbench/mediapipe_client.py", "src/ferbench/mediapipe_worker.py",
                  "workflow/scripts/landmarks.py"],
    "folds": ["src/ferbench/splits.py", "src/ferbench/audit.py", "workflow/scripts/folds.py"],
    "augment": ["src/ferbench/augment.py", "workflow/scripts/augment.py"],
    "dcgan": ["src/ferbench/gan_augment.py", "src/ferbench/models/dcgan.py",
              "workflow/scripts/dcgan.py"],
    "train": ["src/ferbench/train.py", "src/ferbench/inputs.py", "src/ferbench/models",
              "workflow/scripts/train.py"],
    "evaluate": ["src/ferbench/evaluate.py", "src/ferbench/inputs.py",
                 "workflow/scripts/evaluate.py",
                 "workflow/scripts/summarize.py"],
    "explain": ["src/ferbench/explain.py", "src/ferbench/models", "src/ferbench/report.py",
                "workflow/scripts/explain.py"],
    "compare": ["src/ferbench/compare.py", "workflow/scripts/compare.py"],
    "audit": ["src/ferbench/audit.py", "src/ferbench/report.py", "workflow/scripts/audit.py"],
    "report": ["src/ferbench/report.py", "src/ferbench/compare.py", "src/ferbench/published.py",
               "src/ferbench/published.yaml", "workflow/scripts/report.py"],
}
SHARED_CODE = ["src/ferbench/jobs.py", "Snakefile", "workflow/rules"]


def _stage(rule: str, config_file: str, targets: list[str], deps: list[str], params: list[str],
           metrics: list[str] = ()) -> dict:
    cmd = (f"snakemake --configfile {config_file} --rerun-triggers input params -- "
           + " ".join(targets))
    stage = {"cmd": cmd, "deps": sorted(set(deps + CODE[rule] + SHARED_CODE))}
    if params:
        stage["params"] = [{config_file: list(params)}]
    stage["outs"] = [t for t in targets if t not in metrics]
    if metrics:
        stage["metrics"] = list(metrics)  # cached: results/ is not in git, so DVC keeps them
    return stage


def stages(config: dict, config_file: str) -> dict:
    """Ordered mapping of stage name -> DVC stage for every study in the config."""
    fill = lambda template, **w: paths.fill(template, config, **w)  # noqa: E731
    out = {}
    trainings = paths.trainings(config)
    for dataset in dict.fromkeys(paths.study_datasets(config) + [t.dataset for t in trainings]):
        block = config["datasets"][dataset]
        ds = [f"datasets.{dataset}"]
        raw = []
        if block["source"] != "path":
            raw = [fill(paths.RAW, dataset=dataset)]
            out[f"fetch_{dataset}"] = _stage("fetch", config_file, raw, [], ds + ["seed"])
        manifest = fill(paths.MANIFEST, dataset=dataset)
        out[f"ingest_{dataset}"] = _stage(
            "ingest", config_file, [manifest, fill(paths.INGEST_QUARANTINE, dataset=dataset)],
            raw, ds)
        detections = []
        if block["faces"]["detector"] == "mediapipe":
            detections = [fill(paths.MEDIAPIPE_DETECTIONS, dataset=dataset)]
            out[f"mediapipe_detect_{dataset}"] = _stage("mediapipe_detect", config_file,
                                                        detections, raw + [manifest], ds)
        faces = [fill(t, dataset=dataset) for t in
                 (paths.FACES_ARRAY, paths.FACES_TABLE, paths.FACES_SAMPLES, paths.DETECTION)]
        out[f"faces_{dataset}"] = _stage("faces", config_file, faces,
                                         raw + [manifest] + detections, ds)
        out[f"landmarks_{dataset}"] = _stage(
            "landmarks", config_file,
            [fill(paths.LANDMARKS_ARRAY, dataset=dataset),
             fill(paths.LANDMARKS_SAMPLES, dataset=dataset)],
            raw + [fill(paths.FACES_TABLE, dataset=dataset),
                   fill(paths.FACES_ARRAY, dataset=dataset)], ds)
    from ferbench.models import get

    for dataset, protocol in dict.fromkeys((t.dataset, t.protocol) for t in trainings):
        key, w = f"{dataset}_{protocol}", {"dataset": dataset, "protocol": protocol}
        n_folds = splits.fold_count(config["protocols"][protocol])
        folds = fill(paths.FOLDS, **w)
        tested = paths.test_dataset(config, dataset, protocol)
        face_tables = [fill(paths.FACES_TABLE, dataset=d) for d in dict.fromkeys((dataset, tested))]
        hashed = ([fill(paths.FACES_ARRAY, dataset=d) for d in dict.fromkeys((dataset, tested))]
                  if config["protocols"][protocol]["dedupe"] == "drop" else [])
        out[f"folds_{key}"] = _stage(
            "folds", config_file, [folds], face_tables + hashed,
            [f"protocols.{protocol}", "seed"])
        augmented = [fill(t, fold=k, **w) for k in range(n_folds)
                     for t in (paths.AUGMENT_ARRAY, paths.AUGMENT_TABLE)]
        out[f"augment_{key}"] = _stage(
            "augment", config_file, augmented, [fill(paths.FACES_ARRAY, dataset=dataset), folds],
            ["augment", "seed"])
        if any(get(t.model).trains_on_dcgan for t in trainings if (t.dataset, t.protocol) == (
                dataset, protocol)):
            out[f"dcgan_{key}"] = _stage(
                "dcgan", config_file,
                [fill(t, fold=k, **w) for k in range(n_folds)
                 for t in (paths.DCGAN_ARRAY, paths.DCGAN_TABLE, paths.DCGAN_SAMPLES)],
                [fill(paths.FACES_ARRAY, dataset=dataset), folds],
                ["dcgan", "seed", "device", "train_threads"])
    for training in trainings:
        w = {"dataset": training.dataset, "protocol": training.protocol}
        m = {**w, "model": training.model}
        extras = [path for k in training.folds for value in paths.training_inputs(
            config, training.dataset, training.protocol, training.model, k).values()
            for path in ([value] if isinstance(value, str) else value)]
        out[f"train_{training.dataset}_{training.protocol}_{training.model}"] = _stage(
            "train", config_file, _trained(config, m, training.folds),
            [fill(paths.FACES_ARRAY, dataset=training.dataset), fill(paths.FOLDS, **w)]
            + [fill(t, fold=k, **w) for k in training.folds
               for t in (paths.AUGMENT_ARRAY, paths.AUGMENT_TABLE)] + extras,
            _recipe_params(config, training) + ["seed", "device", "train_threads"])
    for study in paths.studies(config):
        m = {"dataset": study.dataset, "protocol": study.protocol, "model": study.model}
        key = f"{study.dataset}_{study.protocol}_{study.model}"
        folds = fill(paths.FOLDS, **m)
        tested = paths.test_dataset(config, study.dataset, study.protocol)
        reads = [fill(paths.FACES_ARRAY, dataset=tested), folds,
                 *paths.model_inputs(config, tested, study.model).values()]
        trained = _trained(config, m, range(study.folds))
        evaluated = [fill(t, fold=k, **m) for k in range(study.folds)
                     for t in (paths.METRICS, paths.PREDICTIONS)]
        out[f"evaluate_{key}"] = _stage(
            "evaluate", config_file, evaluated + [fill(paths.SUMMARY, **m)], reads + trained, [])
        out[f"explain_{key}"] = _stage(
            "explain", config_file, [fill(t, **m) for t in paths.EXPLAIN],
            reads + [fill(paths.MODEL, fold=paths.EXPLAINED_FOLD, **m)],
            # The record names the dataset's adapter and the protocol, for the report.
            [f"datasets.{study.dataset}", f"protocols.{study.protocol}", "seed", "device"])
    for (dataset, protocol), models in paths.study_models(config).items():
        w = {"dataset": dataset, "protocol": protocol}
        n_folds = splits.fold_count(config["protocols"][protocol])
        out[f"compare_{dataset}_{protocol}"] = _stage(
            "compare", config_file, [fill(paths.STATISTICS, **w)],
            [fill(paths.FOLDS, **w)] + [fill(paths.SUMMARY, model=m, **w) for m in models]
            + [fill(paths.PREDICTIONS, model=m, fold=k, **w) for m in models
               for k in range(n_folds)],
            ["seed"])
        tested = paths.test_dataset(config, dataset, protocol)
        out[f"audit_{dataset}_{protocol}"] = _stage(
            "audit", config_file, [fill(paths.AUDIT, **w), fill(paths.AUDIT_PAIRS, **w)],
            [fill(paths.FOLDS, **w)] + [fill(paths.FACES_ARRAY, dataset=d)
                                        for d in dict.fromkeys((dataset, tested))],
            [f"protocols.{protocol}"])
    report_deps = paths.summaries(config) + paths.explanations(config) + [
        p for template in (paths.STATISTICS, paths.AUDIT, paths.AUDIT_PAIRS)
        for p in paths.per_protocol(template, config)] + [
        fill(t, dataset=d) for d in paths.study_datasets(config)
        for t in (paths.DETECTION, paths.FACES_SAMPLES, paths.LANDMARKS_SAMPLES)]
    metrics = fill(paths.STUDY_METRICS)
    out["report"] = _stage("report", config_file, [fill(paths.REPORT), metrics], report_deps,
                           ["report"], metrics=[metrics])
    return out


def _recipe_params(config: dict, training: paths.Training) -> list[str]:
    """The config keys a training's recipe is read from (ferbench.config.recipe_blocks): its
    own blocks, and those of the model whose trunk it takes or of an ensemble's members; a
    study block as `studies`."""
    from ferbench.config import members, recipe_blocks
    from ferbench.models import get

    voters = members(config, training.dataset, training.protocol, training.model)
    keys = [key for model in (training.model, get(training.model).starts_from, *voters) if model
            for key, _ in recipe_blocks(config, training.dataset, training.protocol, model)]
    own = [key for key in keys if key.startswith("models.")]
    return own + ["studies"] if len(own) < len(keys) else own


def _trained(config: dict, wildcards: dict, folds) -> list[str]:
    """What the train rule writes for these folds of one model."""
    return [paths.fill(t, config, fold=k, **wildcards) for k in folds
            for t in (paths.MODEL, paths.HISTORY, paths.RUN_INFO)]


#: The curves of a history.csv (train.HISTORY_COLUMNS) drawn against its epoch, per plot.
CURVES = {"accuracy": ["train_acc", "val_acc"], "loss": ["train_loss", "val_loss"]}


def plots(config: dict) -> list[dict]:
    """DVC plot definitions: per study, every fold's training curves and the confusion
    matrix of the folds' test predictions (true label on x, predicted on y)."""
    out = []
    trained = {(t.dataset, t.protocol, t.model) for t in paths.trainings(config)}
    for study in paths.studies(config):
        m = {"dataset": study.dataset, "protocol": study.protocol, "model": study.model}
        name = f"{study.dataset}/{study.protocol}/{study.model}"
        folds = range(study.folds)
        if tuple(m.values()) in trained:  # an evaluate-only model has no history
            for curve, columns in CURVES.items():
                out.append({f"{name}/{curve}": {
                    "template": "linear", "x": "epoch", "y_label": curve,
                    "title": f"{name}: {curve} per epoch, one line per fold",
                    "y": {paths.fill(paths.HISTORY, config, fold=k, **m): list(columns)
                          for k in folds}}})
        out.append({f"{name}/confusion": {
            "template": "confusion", "x": "label", "y": {
                paths.fill(paths.PREDICTIONS, config, fold=k, **m): "predicted" for k in folds},
            "title": f"{name}: test confusion over the folds", "x_label": "true label",
            "y_label": "predicted"}})
    return out


def render(config: dict, config_file: str) -> str:
    header = ("# Generated by `ferbench dvc-yaml` from the Snakemake study config; do not edit.\n"
              "# Each stage delegates to Snakemake, so the DAG has one source of truth.\n")
    return header + yaml.safe_dump({"stages": stages(config, config_file),
                                    "plots": plots(config)}, sort_keys=False, width=100)
