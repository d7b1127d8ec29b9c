"""One function per workflow rule: plain paths and dicts in, files out.

`workflow/scripts/*.py` only unpack the `snakemake` object and call these, so every stage
can also be run and tested from Python without Snakemake.

Each job runs in a fresh process, so torch (and the models) are imported only by the jobs
that build a network: importing torch costs a data job (ingest, faces, folds, augment,
audit, summarize, report) about 1.5 s of its 2.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ferbench import augment as augment_mod
from ferbench import evaluate, faces, splits, tracking
from ferbench.data import manifest as manifest_mod
from ferbench.data.manifest import CANONICAL_LABELS

if TYPE_CHECKING:
    import torch

    from ferbench import models
    from ferbench import train as train_mod


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def write_json(path, data) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


# -- 1. fetch / ingest -----------------------------------------------------------------------

def fetch(dataset: dict, raw_dir, seed: int, progress: bool = True) -> None:
    """Materialise a dataset's raw files: generate the synthetic one, or download + extract."""
    raw_dir = Path(raw_dir)
    if dataset["source"] == "generate":
        from ferbench.data import synthetic

        options = {"seed": seed, **dataset["generate"]}
        options["frame_size"] = tuple(options["frame_size"])
        table = synthetic.generate(raw_dir, progress=progress, **options)
        table.to_csv(raw_dir / "manifest.csv", index=False, lineterminator="\n")
    elif dataset["source"] == "url":
        from ferbench.data import download

        archive = raw_dir.parent / "download" / Path(dataset["url"]).name
        archive.parent.mkdir(parents=True, exist_ok=True)
        download.fetch(dataset["url"], archive, dataset["sha256"], progress=progress)
        limit = dataset.get("extract_limit_gb")
        download.extract(archive, raw_dir, None if limit is None else int(limit * 10**9))
    else:
        raise ValueError(f"source {dataset['source']!r} has nothing to fetch")


def ingest(dataset: dict, root, manifest_path, quarantine_path) -> dict:
    """Read the native layout through its adapter; write manifest and quarantine tables."""
    from ferbench.data import adapters

    options = dict(dataset.get("adapter_options", {}))
    if dataset.get("obtain"):
        options["obtain"] = dataset["obtain"]
    result = adapters.load(dataset["adapter"], Path(root), **options)
    manifest_mod.write(result.manifest, manifest_path)
    result.quarantine.to_csv(quarantine_path, index=False, lineterminator="\n")
    return manifest_mod.counts(result.manifest)


# -- 2. faces --------------------------------------------------------------------------------

def detect(name: str, dataset: dict, root, manifest_path, out: dict, progress: bool = True,
           threads: int = 1, detections=None) -> dict:
    """Face stage over one dataset, Haar's search split over `threads` processes; `out` maps
    array/table/stats/samples to paths; `detections`: the `mediapipe_detect` rule's faces."""
    options = faces.FaceOptions.from_config(dataset["faces"])
    table = manifest_mod.read(manifest_path)
    recorded = faces.RecordedDetections(detections, options.min_face) if detections else None
    array, face_table, stats = faces.extract_faces(table, Path(root), options, progress,
                                                   workers=threads, recorded=recorded)
    faces.write_outputs(array, face_table, stats, out["array"], out["table"], out["stats"],
                        out["samples"], name)
    return stats


# -- 3. folds / 4. augment -------------------------------------------------------------------

def read_faces_table(path) -> pd.DataFrame:
    """The face stage's table with ids kept as text."""
    return pd.read_csv(path, dtype={"image": str, "subject": str, "sequence": str,
                                    "source_split": str},
                       keep_default_na=False, na_values={"face_index": []})


def make_folds(faces_table, protocol: dict, seed: int, out_path,
               test_faces_table=None, dedupe_arrays: tuple | None = None) -> pd.DataFrame:
    """Write a protocol's split table; a protocol the data cannot satisfy is reported as
    `<dataset>/<protocol>: ...`, read off the path (paths.FOLDS). `test_faces_table` is the
    test dataset's face table of a cross-dataset protocol. With `dedupe_arrays` (the trained
    and the tested faces.npy, for `dedupe: drop`) near-duplicate test faces are set aside."""
    test_faces = read_faces_table(test_faces_table) if test_faces_table else None
    try:
        folds = splits.make_folds(read_faces_table(faces_table), protocol, seed, test_faces)
    except splits.ProtocolError as err:
        study = Path(out_path).parent
        raise splits.ProtocolError(f"{study.parent.name}/{study.name}: {err}") from None
    if dedupe_arrays:
        from ferbench import audit

        trained, tested = (audit.dhash(np.load(p)) for p in dedupe_arrays)
        folds = audit.drop_near_duplicates(folds, trained, tested,
                                           protocol["duplicate_distance"])
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    folds.to_csv(out_path, index=False, lineterminator="\n")
    return folds


def read_folds(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"subject": str, "sequence": str, "label": str},
                       keep_default_na=False)


def augment_fold(faces_array, folds_path, fold: int, options: dict, seed: int, out_array,
                 out_table) -> None:
    array, table = augment_mod.augment_fold(np.load(faces_array, mmap_mode="r"),
                                            read_folds(folds_path), fold,
                                            augment_mod.AugmentOptions.from_config(options), seed)
    Path(out_array).parent.mkdir(parents=True, exist_ok=True)
    np.save(out_array, array)
    table.to_csv(out_table, index=False, lineterminator="\n")


# -- 4b. DCGAN augmentation ------------------------------------------------------------------

def dcgan_fold(faces_array, folds_path, fold: int, options: dict, seed: int, out_array,
               out_table, out_samples=None, threads: int = 1, device: str = "cpu",
               progress: bool = True) -> None:
    """DE-Capsnet's per-class DCGAN faces for one fold, trained on its training role only.
    The thread count is fixed because CPU float reductions, and so the bytes, depend on it;
    `device` is the config's (auto: CUDA when present)."""
    from ferbench import gan_augment
    from ferbench import train as train_mod

    train_mod.make_deterministic(seed, threads)
    array, table = gan_augment.generate_fold(np.load(faces_array), read_folds(folds_path), fold,
                                             gan_augment.DCGANOptions.from_config(options), seed,
                                             progress, train_mod.select_device(device))
    Path(out_array).parent.mkdir(parents=True, exist_ok=True)
    np.save(out_array, array)
    table.to_csv(out_table, index=False, lineterminator="\n")
    if out_samples:
        gan_augment.sample_sheet(array, table, out_samples)


# -- 5. train --------------------------------------------------------------------------------

def protocol_labels(folds: pd.DataFrame) -> list[str]:
    """Class names of a split table in canonical order (absent classes get no output unit)."""
    present = set(folds["label"])
    return [label for label in CANONICAL_LABELS if label in present]


def _landmarks(paths: dict) -> np.ndarray | None:
    return np.load(paths["landmarks"]) if paths.get("landmarks") else None


def role_split(paths: dict, folds: pd.DataFrame, fold: int, role: str, labels, model: str,
               input_size: int) -> tuple[train_mod.Split, pd.DataFrame]:
    """The val or test faces of a fold (`paths["faces"]`) as `model` takes them: with its
    extra channels (AU maps from `paths["landmarks"]`), at its input size."""
    from ferbench import inputs, models
    from ferbench import train as train_mod

    part = folds[(folds["fold"] == fold) & (folds["role"] == role)]
    uids = part["uid"].to_numpy()
    images = inputs.stack_channels(np.load(paths["faces"])[uids],
                                   models.get(model).extra_channels, uids, _landmarks(paths))
    index = train_mod.class_index(labels)
    split = train_mod.Split.from_arrays(images, part["label"].map(index).to_numpy(), input_size)
    return split, part


def training_table(paths: dict) -> pd.DataFrame:
    """One row per training face of a fold, in the training split's order: the augment
    table (uid, label, subject, copy, the transform), then the DCGAN table when `paths`
    names one."""
    tables = [pd.read_csv(paths[key], dtype={"subject": str}, keep_default_na=False)
              for key in ("augment_table", "dcgan_table") if paths.get(key)]
    return pd.concat(tables, ignore_index=True).fillna(augment_mod.IDENTITY)


def training_split(paths: dict, labels, model: str, input_size: int,
                   table: pd.DataFrame | None = None) -> train_mod.Split:
    """A fold's augmented training faces, plus its DCGAN samples when `paths` names them,
    with the model's extra channels moved exactly as each augmented face was, each face's
    gender (when `paths` names the face table) and sequence (from the split table).
    `table` is `training_table(paths)` when the caller has read it already."""
    from ferbench import inputs, models
    from ferbench import train as train_mod

    table = training_table(paths) if table is None else table
    arrays = [np.load(paths[key]) for key in ("augment_array", "dcgan_array") if paths.get(key)]
    images = inputs.stack_channels(np.concatenate(arrays), models.get(model).extra_channels,
                                   table["uid"].to_numpy(), _landmarks(paths), table)
    index = train_mod.class_index(labels)
    groups = (inputs.gender_groups(read_faces_table(paths["faces_table"]), table["uid"])
              if paths.get("faces_table") else None)
    sequences = inputs.sequence_indices(read_folds(paths["folds"]), table["uid"])
    return train_mod.Split.from_arrays(images, table["label"].map(index).to_numpy(), input_size,
                                       groups, sequences)


def study_tags(study: dict) -> dict:
    key = f"{study['dataset']}/{study['protocol']}/{study['model']}"
    return {"dataset": study["dataset"], "protocol": study["protocol"], "model": study["model"],
            tracking.STUDY_TAG: key}


def train_fold(study: dict, fold: int, paths: dict, config: dict, hyperparameters: dict,
               threads: int = 1, progress: bool = True) -> dict:
    """Train one fold of one study, logging every epoch to MLflow; resumes after a kill.

    `study` holds dataset/protocol/model; `paths` holds faces, folds, augment (inputs),
    model, history, run (outputs) and checkpoint; `hyperparameters` is the training's
    effective recipe (`ferbench.config.recipe`), which alone decides how the model is built
    and trained; `config` gives the run's settings (seed, device, tracking).
    """
    import torch

    from ferbench import models
    from ferbench import train as train_mod

    seed = config["seed"]
    train_mod.make_deterministic(seed, threads)
    device = train_mod.select_device(config["device"])
    spec = models.get(study["model"])
    hp = dict(hyperparameters)
    folds = read_folds(paths["folds"])
    labels = protocol_labels(folds)
    if paths.get("init"):  # the DAG edge from step 1 or the pretraining stage
        hp.update(init_from=paths["init"], **({"init_sha256": ""} if "init_sha256" in hp else {}))
    if paths.get("members"):  # an ensemble's edges, one per member
        hp["members_from"] = list(paths["members"])
    table = training_table(paths)
    train_split = training_split(paths, labels, study["model"], spec.input_size(hp), table)
    val_split, _ = role_split(paths, folds, fold, "val", labels, study["model"],
                              spec.input_size(hp))
    model = spec.load_start(spec.build(len(labels), hp), hp, labels)
    start = describe_start(spec, hp, paths.get("init"))
    autocast = train_mod.autocast_dtype(config["mixed_precision"], device, model)
    precision = str(autocast or torch.float32).removeprefix("torch.")

    tracker = _tracker(config)
    checkpoint = Path(paths["checkpoint"])
    files = [paths[k] for k in ("faces", "folds", "augment_array", "augment_table", "landmarks",
                                "dcgan_array", "dcgan_table", "faces_table") if paths.get(k)]
    if hp.get("init_from") and Path(hp["init_from"]).is_file():  # a retrained stage 1 counts
        files.append(hp["init_from"])
    files += hp.get("members_from", [])
    fingerprint = hashlib.sha256(json.dumps(
        [hp, seed, labels, threads, device.type, precision, *map(file_sha256, files)],
        sort_keys=True).encode()).hexdigest()
    params = {**hp, "dataset": study["dataset"], "protocol": study["protocol"],
              "model": study["model"], "fold": fold, "start": start, "seed": seed,
              "device": device.type,
              "precision": precision,
              "threads": threads, "labels": ",".join(labels), "n_train": len(train_split),
              "n_val": len(val_split), "git_commit": tracking.git_commit(),
              "config_hash": config_hash(config),
              "faces_sha256": file_sha256(paths["faces"])[:16],
              "folds_sha256": file_sha256(paths["folds"])[:16]}
    # Created with its identifying tags in one request and looked up by them: a job killed
    # at any point, run again, continues this run instead of leaving an orphan.
    tags = {**study_tags(study), "fold": fold, tracking.ROLE_TAG: "fold",
            tracking.FINGERPRINT_TAG: fingerprint}
    run_id = tracker.open_run(f"{study['model']}-fold{fold}", tags, params,
                              unfinished_only=True, source="workflow/scripts/train.py")
    manifest = Path(paths["manifest"])
    tracker.log_dataset(run_id, manifest_mod.read(manifest), str(manifest.resolve()),
                        study["dataset"], file_sha256(manifest)[:16])
    logged = tracker.logged_steps(run_id, "val_acc")  # by the killed job, if any

    def log_epoch(row, state_extra):
        if row["epoch"] not in logged:  # a resumed job may retrain one the kill cut short
            tracker.log_metrics(run_id, {k: v for k, v in row.items() if k != "epoch"},
                                step=row["epoch"])

    with tracker.system_metrics(run_id, config["mlflow"]["system_metrics_s"]):
        if spec.closed_form:
            held_out = (splits.subject_folds(table, hp["subject_folds"], seed)
                        if hp.get("subject_folds") else ())
            history, best_state, best_epoch = train_mod.fit_closed_form(
                model, train_split, val_split, seed, log_epoch, {"run_id": run_id},
                hp.get("test_flip", False), held_out)
        else:
            history, best_state, best_epoch, _ = train_mod.fit(
                model, hp, train_split, val_split, checkpoint, seed, device, log_epoch,
                progress, {"run_id": run_id}, fingerprint, autocast)
    save_model(paths["model"], study["model"], labels, hp, best_state,
               config["datasets"][study["dataset"]]["faces"], best_epoch, start,
               {"dataset": study["dataset"], "protocol": study["protocol"], "fold": fold})
    history.to_csv(paths["history"], index=False, lineterminator="\n", float_format="%.6f")
    info = {"run_id": run_id, "tracking_uri": tracker.uri, "best_epoch": best_epoch,
            "epochs_run": int((history["epoch"] > 0).sum()),  # epoch 0: a kept start
            "n_train": len(train_split), "n_val": len(val_split)}
    write_json(paths["run"], info)
    train_mod.remove_checkpoint(checkpoint)  # only unfinished jobs keep these
    return info


def describe_start(spec: models.ModelSpec, hp: dict, init=None) -> str:
    """What a run's weights start from, in words (`start` in model.pt and MLflow, for the
    report). `init` is the model.pt a DAG edge starts it from (DAM-CNN's first step, a
    pretraining stage), described by its own record, so the chain back to the first
    weights is told."""
    from ferbench import train as train_mod

    if init:
        saved = train_mod.load_tensors(init)
        where = saved.get("trained_on")
        text = saved["model"] + (f" trained on {where['dataset']}/{where['protocol']} fold "
                                 f"{where['fold']}" if where else "")
        return text + (f", itself from {saved['start']}" if saved.get("start") else "")
    if spec.combines:
        if hp.get("vote") == "validation":
            return (f"the vote of {', '.join(hp['members'])}, each trained on this fold, "
                    "weighted by shares chosen on the validation split")
        return f"the mean vote of {', '.join(hp['members'])}, each trained on this fold"
    weights = hp.get("init_from") or hp.get("pretrained")
    if spec.closed_form and not weights:
        return "fitted in closed form (no weights to start from)"
    if not weights:
        return "random init"
    checked = hp.get("init_sha256") or hp.get("pretrained_sha256")
    start = (f"{spec.weights_from} weights {Path(weights).name}" if checked and spec.weights_from
             else f"weights {weights}")
    return start + (", frozen; a linear readout fitted in closed form" if spec.closed_form
                    else "")


def _tracker(config: dict) -> tracking.Tracker:
    uri = tracking.resolve_uri(config["mlflow"]["tracking_uri"], config["results"])
    return tracking.Tracker(uri, config["mlflow"]["experiment"], config["results"])


def save_model(path, model: str, labels, hyperparameters: dict, state_dict: dict,
               face_options: dict, best_epoch: int = 0, start: str = "",
               trained_on: dict | None = None) -> Path:
    """Write a `model.pt`: weights with everything needed to use them outside the workflow.

    The face options travel with the weights, so `ferbench live` preprocesses exactly as
    the training faces were. `start` (describe_start) and `trained_on` (dataset, protocol,
    fold) say where the weights come from."""
    import torch

    from ferbench import models

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model, "labels": list(labels), "hyperparameters": hyperparameters,
                "input_size": models.get(model).input_size(hyperparameters),
                "state_dict": state_dict, "best_epoch": best_epoch,
                "faces": dict(face_options), "start": start, "trained_on": trained_on}, path)
    return Path(path)


def load_model(path, device: torch.device | None = None):
    """A trained model and its labels from a `model.pt` written by train_fold (tensors and
    plain values only: train.UnsafeFileError for anything else)."""
    from ferbench import train as train_mod

    saved = train_mod.load_tensors(path)
    return build_model(saved, saved["state_dict"], device), saved


def build_model(record: dict, state_dict: dict, device: torch.device | None = None):
    """The network a model.pt record (model, labels, hyperparameters) describes, with
    `state_dict`'s weights, in eval mode."""
    import torch

    from ferbench import models

    # The state dict holds every weight: what the model started from is not read again.
    model = models.get(record["model"]).build(len(record["labels"]), record["hyperparameters"])
    model.load_state_dict(state_dict)
    return model.to(device or torch.device("cpu")).eval()


# -- 6. evaluate -----------------------------------------------------------------------------

def trained_and_tested(paths: dict, fold: int, config: dict, threads: int):
    """(model, its model.pt record, test split, test rows, device) of one trained fold."""
    import torch

    from ferbench import train as train_mod

    torch.set_num_threads(max(1, threads))
    device = train_mod.select_device(config["device"])
    model, saved = load_model(paths["model"], device)
    test_split, test_rows = role_split(paths, read_folds(paths["folds"]), fold, "test",
                                       saved["labels"], saved["model"], saved["input_size"])
    return model, saved, test_split, test_rows, device


def evaluate_fold(study: dict, fold: int, paths: dict, config: dict, threads: int = 1) -> dict:
    """Test-set metrics and predictions of one fold, from its files alone. The study's
    summary logs them into the fold's MLflow run (close_fold_run): MLflow's imports and
    store cost a job about as much as a small model's whole evaluation."""
    from ferbench import train as train_mod

    model, saved, test_split, test_rows, device = trained_and_tested(paths, fold, config,
                                                                     threads)
    probs = train_mod.predict(model, test_split, device, autocast=train_mod.autocast_dtype(
        config["mixed_precision"], device, model),
        flip=saved["hyperparameters"].get("test_flip", False))
    predicted = probs.argmax(1).numpy() if len(probs) else np.zeros(0, int)
    metrics = evaluate.classification_metrics(test_split.targets.numpy(), predicted,
                                              saved["labels"])
    info = read_json(paths["run"])
    metrics.update(best_epoch=info["best_epoch"], epochs_run=info["epochs_run"],
                   n_train=info["n_train"], n_val=info["n_val"], n_test=len(test_split),
                   fold=fold, **{k: study[k] for k in ("dataset", "protocol", "model")},
                   run_id=info["run_id"], recipe=saved["hyperparameters"],
                   start=saved.get("start", ""))
    write_json(paths["metrics"], metrics)
    out = test_rows[["uid", "subject", "label"]].reset_index(drop=True)
    out["predicted"] = [saved["labels"][i] for i in predicted]
    for i, label in enumerate(saved["labels"]):
        out[f"p_{label}"] = probs[:, i].numpy().round(6) if len(probs) else []
    out.to_csv(paths["predictions"], index=False, lineterminator="\n")
    return metrics


# -- 6b. explain -----------------------------------------------------------------------------

def study_context(study: dict, config: dict) -> dict:
    """What the papers' tables are matched on: dataset adapter, protocol kind and options."""
    protocol = config["protocols"][study["protocol"]]
    tested = protocol.get("test_dataset", study["dataset"])  # a cross-dataset protocol's
    return {**{k: study[k] for k in ("dataset", "protocol", "model")},
            "adapter": config["datasets"][study["dataset"]]["adapter"],
            "test_adapter": config["datasets"][tested]["adapter"],
            "kind": protocol["kind"], "class_set": protocol["class_set"],
            "frames": protocol["frames"], "folds": splits.fold_count(protocol)}


def explain_fold(study: dict, fold: int, paths: dict, config: dict, threads: int = 1) -> dict:
    """Attention heatmaps and t-SNE of one fold's test faces (explain.py); `paths` holds the
    evaluate stage's faces, folds (and landmarks) and model, and attention/tsne/info outputs."""
    from ferbench import explain

    model, saved, test_split, test_rows, _ = trained_and_tested(paths, fold, config, threads)
    info = explain.explain(model, test_split.images, test_split.targets, saved["labels"],
                           paths["attention"], paths["tsne"], config["seed"],
                           study_context(study, config))
    uids = test_rows["uid"].to_numpy()
    for sample in info["samples"]:
        sample["uid"] = int(uids[sample["index"]])
    info.update(fold=fold)
    write_json(paths["info"], info)
    return info


# -- 7. summarise ----------------------------------------------------------------------------

def close_fold_run(tracker: tracking.Tracker, metrics: dict, paths: dict,
                   log_model: bool) -> None:
    """Close a fold's MLflow run: its test metrics, its metrics, predictions and history
    files, its MLflow model (`log_model`) and status FINISHED. What a rerun after a kill
    finds already logged is not logged again."""
    run_id = metrics["run_id"]
    tracker.log_new_metrics(run_id, {"test_accuracy": metrics["accuracy"],
                                     "test_macro_f1": metrics["macro_f1"],
                                     **{f"test_f1_{k}": v["f1"]
                                        for k, v in metrics["per_class"].items()}})
    for key in ("metrics", "predictions", "history"):
        tracker.log_artifact(run_id, paths[key])
    if log_model:
        log_mlflow_model(tracker, run_id, paths["model"])
    tracker.finish(run_id)


def log_mlflow_model(tracker: tracking.Tracker, run_id: str, path) -> str | None:
    """A fold's model.pt as the run's MLflow model (Tracker.log_model), exported on the CPU
    with an input example of two face tensors (two: the batch size stays free), or None for
    a model whose features are computed in numpy (the HOG + SVM anchor's), which
    torch.export cannot trace."""
    from ferbench import models

    network, saved = load_model(path)
    spec = models.get(saved["model"])
    if not network.traceable:
        print(f"{saved['model']} is not logged as an MLflow model: torch.export cannot trace "
              "its numpy features (model.pt stays the way to use it)", flush=True)
        return None
    side, channels = saved["input_size"], 1 + len(spec.extra_channels)
    example = np.random.default_rng(0).uniform(-1, 1, (2, channels, side, side))
    record = {k: v for k, v in saved.items() if k != "state_dict"}
    return tracker.log_model(run_id, network, record, example.astype(np.float32))


def summarize(study: dict, protocol: dict, fold_files: list[dict], folds_path, out_path,
              config: dict) -> dict:
    """Mean +- std over folds; closes each fold's MLflow run (close_fold_run) and nests
    them under one parent run. `fold_files` holds each fold's metrics, predictions, history
    and model paths.

    The fold table says whether the data names real people, which decides whether the
    protocol is subject-independent."""
    folds = [read_json(files["metrics"]) for files in fold_files]
    acc_mean, acc_std = evaluate.mean_std([m["accuracy"] for m in folds])
    f1_mean, f1_std = evaluate.mean_std([m["macro_f1"] for m in folds])
    identities = bool(read_folds(folds_path)["identities"].all())
    description, independent = splits.describe(protocol, identities)
    out_dir = Path(out_path).parent
    summary = {
        **{k: study[k] for k in ("dataset", "protocol", "model")},
        "protocol_description": description,
        "subject_independent": independent,
        "labels": folds[0]["labels"],
        "accuracy_mean": acc_mean, "accuracy_std": acc_std,
        "macro_f1_mean": f1_mean, "macro_f1_std": f1_std,
        "folds": [{"fold": m["fold"], "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                   "metrics": str(Path(files["metrics"]).relative_to(out_dir)),
                   "history": str(Path(files["history"]).relative_to(out_dir)),
                   "n_train": m["n_train"], "n_val": m["n_val"], "n_test": m["n_test"],
                   "best_epoch": m["best_epoch"]}
                  for m, files in zip(folds, fold_files)],
        "confusion": np.sum([m["confusion"] for m in folds], axis=0).tolist(),
        # Every fold of a study trains on one recipe (ferbench.config.recipe).
        "recipe": folds[0]["recipe"], "start": folds[0]["start"],
    }
    tracker = _tracker(config)
    for metrics, files in zip(folds, fold_files):
        close_fold_run(tracker, metrics, files, config["mlflow"]["log_models"])
    # One parent per study and config: a rerun (after a kill, or of this rule) reuses it.
    parent = tracker.open_run(f"{study['model']} on {study['dataset']}/{study['protocol']}",
                              {**study_tags(study), tracking.ROLE_TAG: "parent",
                               tracking.CONFIG_TAG: config_hash(config)},
                              {"folds": len(folds), "protocol_description": description,
                               "subject_independent": independent,
                               "config_hash": config_hash(config)},
                              source="workflow/scripts/summarize.py")
    tracker.log_new_metrics(parent, {"accuracy_mean": acc_mean, "accuracy_std": acc_std,
                                     "macro_f1_mean": f1_mean, "macro_f1_std": f1_std})
    for m in folds:
        tracker.set_tag(m["run_id"], tracking.PARENT_TAG, parent)
    tracker.log_datasets_of(folds[0]["run_id"], parent)
    summary["mlflow_run_id"] = parent
    summary["registered_model"] = (register_best_fold(tracker, study, folds, acc_mean)
                                   if config["mlflow"]["log_models"] else None)
    if summary["registered_model"]:
        tracker.set_tag(parent, "ferbench.registered_model",
                        summary["registered_model"]["uri"])
    write_json(out_path, summary)
    tracker.log_artifact(parent, out_path)
    tracker.finish(parent)
    return summary


def registered_name(study: dict) -> str:
    """The Model Registry's name for a study's models."""
    return f"ferbench-{study['dataset']}-{study['protocol']}-{study['model']}"


def register_best_fold(tracker: tracking.Tracker, study: dict, folds: list[dict],
                       accuracy_mean: float) -> dict | None:
    """Register the MLflow model of the study's best fold (test accuracy, then macro-F1,
    then the lower fold) as a version of `registered_name`; None when it has no MLflow
    model (a closed-form model)."""
    best = max(folds, key=lambda m: (m["accuracy"], m["macro_f1"], -m["fold"]))
    model_uri = tracker.logged_model(best["run_id"])
    if model_uri is None:
        return None
    name = registered_name(study)
    version = tracker.register(
        name, model_uri, best["run_id"],
        f"{study['model']} on {study['dataset']}/{study['protocol']}: fold {best['fold']}, "
        f"the best of {len(folds)} (test accuracy {best['accuracy']:.4f}; mean over folds "
        f"{accuracy_mean:.4f})")
    return {"name": name, "version": version, "fold": best["fold"],
            "uri": f"models:/{name}/{version}"}


# -- 8. report -------------------------------------------------------------------------------

def report(summaries: list, detections: list, benchmark_dir, samples: list, out_html,
           out_metrics, config: dict) -> None:
    """The HTML report, which prints the effective `config` it was run with, plus a flat
    metrics file for `dvc metrics show`."""
    from ferbench import report as report_mod

    benchmarks = sorted(Path(benchmark_dir).glob("*/*.tsv"))
    report_mod.build_report([Path(p) for p in summaries], [Path(p) for p in detections],
                            benchmarks, Path(out_html), title=config["report"]["title"],
                            samples=[Path(p) for p in samples], config=config)
    flat = {}
    for path in summaries:
        s = read_json(path)
        flat[f"{s['dataset']}/{s['protocol']}/{s['model']}"] = {
            k: round(s[k], 6) for k in ("accuracy_mean", "accuracy_std", "macro_f1_mean",
                                        "macro_f1_std")}
    write_json(out_metrics, flat)


# -- 9. compare ------------------------------------------------------------------------------

def read_predictions(path, fold: int) -> pd.DataFrame:
    """A fold's predictions.csv (evaluate_fold), labels kept as text, with its fold number."""
    table = pd.read_csv(path, dtype={"subject": str, "label": str, "predicted": str},
                        keep_default_na=False)
    return table.assign(fold=fold)


def compare_study(summaries: list, predictions: list[list], folds_path, out_path,
                  config: dict) -> dict:
    """Intervals, calibration and paired tests of one (dataset, protocol)'s models
    (compare.study_statistics); `predictions[i]` are the fold files of `summaries[i]`, in
    fold order. Each model's parent MLflow run gets its own numbers and the JSON."""
    from ferbench import compare

    results = []
    for summary_path, fold_files in zip(summaries, predictions):
        s = read_json(summary_path)
        scores = [{k: f[k] for k in ("fold", "accuracy", "macro_f1")} for f in s["folds"]]
        table = pd.concat([read_predictions(p, f["fold"]) for f, p in zip(s["folds"], fold_files)],
                          ignore_index=True)
        results.append((s, compare.Results(s["model"], scores, table)))
    first = results[0][0]
    out = {"dataset": first["dataset"], "protocol": first["protocol"],
           **compare.study_statistics([r for _, r in results], first["labels"],
                                      read_folds(folds_path), config["seed"])}
    write_json(out_path, out)
    parents = [(s["mlflow_run_id"], s["model"]) for s, _ in results if s.get("mlflow_run_id")]
    tracker = _tracker(config) if parents else None
    for run_id, model in parents:
        tracker.log_metrics(run_id, comparison_metrics(out, model))
        tracker.log_artifact(run_id, out_path)
    return out


def comparison_metrics(statistics: dict, model: str) -> dict:
    """A model's parent-run metrics from its (dataset, protocol)'s statistics: its intervals
    and ECE, and each comparison seen from its side (this model minus the other)."""
    own = statistics["models"][model]
    metrics = {"ece": own["calibration"]["ece"]}
    for key in ("accuracy", "macro_f1"):
        metrics.update({f"{key}_ci_low": own[key]["low"], f"{key}_ci_high": own[key]["high"]})
    for pair in statistics["pairs"]:
        if model not in (pair["a"], pair["b"]):
            continue
        sign, other = (1, pair["b"]) if model == pair["a"] else (-1, pair["a"])
        for key in ("accuracy", "macro_f1"):
            bounds = [None if pair[key][b] is None else sign * pair[key][b]
                      for b in ("low", "high")][::sign]
            metrics.update({f"vs_{other}_{key}_diff": sign * pair[key]["mean"],
                            f"vs_{other}_{key}_diff_low": bounds[0],
                            f"vs_{other}_{key}_diff_high": bounds[1],
                            f"vs_{other}_{key}_p": pair[key]["p"],
                            f"vs_{other}_{key}_wilcoxon_p": pair[key]["wilcoxon_p"]})
        metrics[f"vs_{other}_mcnemar_p"] = pair["mcnemar"]["p"]
    return metrics


# -- 10. audit -------------------------------------------------------------------------------

def audit_study(faces_array, tested_faces_array, folds_path, max_distance: int, out_json,
                out_png) -> dict:
    """Near-duplicate leak audit of one (dataset, protocol) (audit.py): per fold, test faces
    whose nearest training face is within `max_distance` dHash bits, and a sheet of the
    closest pairs side by side."""
    from ferbench import audit

    trained = np.load(faces_array)
    tested = trained if Path(tested_faces_array) == Path(faces_array) else np.load(
        tested_faces_array)
    pairs = audit.fold_pairs(read_folds(folds_path), audit.dhash(trained), audit.dhash(tested))
    study = Path(out_json).parent  # paths.AUDIT: <dataset>/<protocol>/audit.json
    found = {"dataset": study.parent.name, "protocol": study.name,
             **audit.summarize(pairs, max_distance, trained, tested)}
    write_json(out_json, found)
    Path(out_png).write_bytes(audit.duplicate_pairs_figure(found["closest"], trained, tested))
    return found
