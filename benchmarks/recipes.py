"""Test accuracy of one model under several training recipes, fold by fold.

Whether a recipe (src/ferbench/recipes.py) helps a model trained from scratch on a small
dataset is a measurement, not a test: this runs one study's stages in a scratch folder
(fetch or read, faces, folds, offline augmentation, as the workflow does) and then trains
and tests the model on the chosen folds under each recipe with the same seed, printing one
row per (recipe, fold) and each recipe's mean. No MLflow run, no results folder.

    python benchmarks/recipes.py CONFIG --dataset jaffe --protocol jaffe_loso \
        --model deep_emotion --folds 0 1 [--recipes paper small_data] [--set epochs=40]
        [--work FOLDER] [--threads 1]
"""

from __future__ import annotations

import argparse
import ast
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ferbench import config as config_mod
from ferbench import jobs, models, paths, recipes, train


def prepare(config: dict, dataset: str, protocol: str, work: Path) -> dict:
    """The study's faces, folds and per-fold augmentation under `work` (reused if there)."""
    block, seed = config["datasets"][dataset], config["seed"]
    raw = work / "raw"
    if block["source"] != "path" and not raw.exists():
        jobs.fetch(block, raw, seed, progress=False)
    root = paths.dataset_root(block, raw)
    paths = {"faces": work / "faces.npy", "faces_table": work / "faces.csv",
             "folds": work / "folds.csv"}
    if not paths["faces"].exists():
        jobs.ingest(block, root, work / "manifest.csv", work / "quarantine.csv")
        jobs.detect(dataset, block, root, work / "manifest.csv",
                    {"array": paths["faces"], "table": paths["faces_table"],
                     "stats": work / "stats.json", "samples": work / "samples.png"},
                    progress=False)
    if not paths["folds"].exists():
        jobs.make_folds(paths["faces_table"], config["protocols"][protocol], seed,
                        paths["folds"])
    return paths


def run_fold(config: dict, paths: dict, fold: int, model_name: str, hp: dict,
             work: Path, threads: int) -> dict:
    seed = config["seed"]
    fold_paths = {**paths, "augment_array": work / f"augment{fold}.npy",
                  "augment_table": work / f"augment{fold}.csv"}
    if not fold_paths["augment_array"].exists():
        jobs.augment_fold(paths["faces"], paths["folds"], fold, config["augment"], seed,
                          fold_paths["augment_array"], fold_paths["augment_table"])
    spec = models.get(model_name)
    folds = jobs.read_folds(paths["folds"])
    labels = jobs.protocol_labels(folds)
    size = spec.input_size(hp)
    fold_paths.pop("faces_table")  # gender groups only matter to DAM-CNN
    train_split = jobs.training_split(fold_paths, labels, model_name, size)
    val_split, _ = jobs.role_split(fold_paths, folds, fold, "val", labels, model_name, size)
    test_split, _ = jobs.role_split(fold_paths, folds, fold, "test", labels, model_name, size)
    train.make_deterministic(seed, threads)
    model = spec.build(len(labels), hp)
    device = torch.device("cpu")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        history, best, best_epoch, _ = train.fit(model, hp, train_split, val_split,
                                                 Path(scratch) / "ckpt.pt", seed, device,
                                                 progress=False)
    model.load_state_dict(best)
    predicted = train.predict(model, test_split, device).argmax(1)
    return {"fold": fold, "n_train": len(train_split), "n_test": len(test_split),
            "epochs": len(history), "best_epoch": best_epoch,
            "val_acc": float(history["val_acc"].max()),
            "test_acc": float((predicted == test_split.targets).float().mean()),
            "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--protocol", required=True)
    parser.add_argument("--model", default="deep_emotion")
    parser.add_argument("--folds", type=int, nargs="+", default=[0])
    parser.add_argument("--recipes", nargs="+", default=list(recipes.PRESETS))
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a hyperparameter for every recipe (Python literal)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "recipes")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    config = config_mod.load(args.config)
    work = args.work / args.dataset / args.protocol
    work.mkdir(parents=True, exist_ok=True)
    paths = prepare(config, args.dataset, args.protocol, work)
    overrides = {name: ast.literal_eval(value)
                 for name, value in (item.split("=", 1) for item in args.set)}
    print(f"{args.model} on {args.dataset}/{args.protocol}, seed {config['seed']}, "
          f"{args.threads} thread(s), overrides {overrides or 'none'}")
    print(f"{'recipe':<12} {'fold':>4} {'train':>5} {'test':>4} {'epochs':>6} {'best':>4} "
          f"{'val_acc':>7} {'test_acc':>8} {'s':>6}")
    for recipe in args.recipes:
        hp = models.get(args.model).hyperparameters(
            {**config["models"].get(args.model, {}), **overrides, "recipe": recipe})
        rows = [run_fold(config, paths, fold, args.model, hp, work, args.threads)
                for fold in args.folds]
        for r in rows:
            print(f"{recipe:<12} {r['fold']:>4} {r['n_train']:>5} {r['n_test']:>4} "
                  f"{r['epochs']:>6} {r['best_epoch']:>4} {r['val_acc']:>7.3f} "
                  f"{r['test_acc']:>8.3f} {r['seconds']:>6.1f}", flush=True)
        print(f"{recipe:<12} mean test_acc {np.mean([r['test_acc'] for r in rows]):.3f} "
              f"over {len(rows)} fold(s)", flush=True)


if __name__ == "__main__":
    main()
