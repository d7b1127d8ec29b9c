"""Do parallel fold jobs use the machine? A 10-fold study's training against one fold alone.

With `train_threads: 1` each training job should keep one core busy, so on 2 cores the 10
folds of a study should train in the time of 5 folds one after another. This runs a small
10-fold study (synthetic data, deep_emotion) through the real Snakemake with `--cores 2`:
first everything up to training (untimed), then fold 0's training alone (T1, one
`snakemake` call), then all 10 folds' training (T10, one call), both with `--forcerun=train`
so that a kept folder (--keep) retrains too.
Both calls include Snakemake's own start and each job's process start, as a study's do.

    ratio = (10 x T1 / 2) / T10      goal >= 0.85

It also prints each training job's peak memory (max_rss) and wall and CPU seconds, from the
`benchmark:` files Snakemake writes, alone and side by side; and, as a control for a machine
shared with other work, the same ratio for a plain one-thread torch loop (a process timed
alone, then --cores copies at once): what the machine itself gives at that moment.

    python benchmarks/parallel_folds.py [--epochs 4] [--cores 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from dag import snakemake
from ferbench import paths

FOLDS = 10
MODEL = "deep_emotion"
DATASET, PROTOCOL = "synthetic", "subject_10fold"


def study_config(results: Path, epochs: int) -> dict:
    """The demo study on 10 identities, one model, 10 subject folds, one thread per job."""
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml")
                            .read_text())
    config["results"] = str(results)
    config["train_threads"] = 1
    config["datasets"][DATASET]["generate"].update(identities=FOLDS, repetitions=2)
    config["protocols"] = {PROTOCOL: {**config["protocols"]["subject_5fold"], "folds": FOLDS}}
    config["studies"] = [{"dataset": DATASET, "protocol": PROTOCOL, "models": [MODEL]}]
    config["models"] = {MODEL: {"epochs": epochs, "patience": epochs}}
    return config


def fold_path(template: str, config: dict, fold: int, **wildcards) -> str:
    return paths.fill(template, config, dataset=DATASET, protocol=PROTOCOL, model=MODEL,
                      fold=fold, **wildcards)


def train_benchmark(config: dict, fold: int) -> pd.Series:
    """Snakemake's benchmark of a fold's training job (s, max_rss, cpu_time), its last run."""
    name = f"{DATASET}/{PROTOCOL}/{MODEL}/fold{fold}"
    return pd.read_csv(fold_path(paths.BENCHMARK, config, fold, rule="train", name=name),
                       sep="\t").iloc[-1]


#: The control: one thread of matrix products, about 5 s on an idle core, torch's import included.
CONTROL = ("import torch; torch.set_num_threads(1); x = torch.randn(256, 256)\n"
           "for _ in range(4000): x = torch.tanh(x @ x)")


def control_ratio(cores: int) -> tuple[float, float]:
    """(seconds of the control alone, alone / seconds of `cores` copies at once): 1.0 when
    the machine has `cores` idle cores."""
    def wall(copies: int) -> float:
        start = time.perf_counter()
        for process in [subprocess.Popen([sys.executable, "-c", CONTROL]) for _ in range(copies)]:
            if process.wait():
                sys.exit("the control loop failed")
        return time.perf_counter() - start

    alone = wall(1)
    return alone, alone / wall(cores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per fold (no early stop)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        config = study_config(workdir / "results", args.epochs)
        (workdir / "study.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

        def run(*targets: str) -> float:
            return snakemake(workdir, *targets, cores=args.cores)[0]

        models = [fold_path(paths.MODEL, config, fold) for fold in range(FOLDS)]
        inputs = [fold_path(template, config, fold) for fold in range(FOLDS)
                  for template in (paths.AUGMENT_ARRAY, paths.AUGMENT_TABLE)]
        prepare = run(*inputs)
        # `=`: the spaced form would take the targets that follow as more rules to force.
        one = run("--forcerun=train", models[0])
        alone = train_benchmark(config, 0)
        ten = run("--forcerun=train", *models)
        side_by_side = pd.DataFrame([train_benchmark(config, fold) for fold in range(FOLDS)])
        control_alone, control = control_ratio(args.cores)

    ideal = FOLDS * one / args.cores
    print(f"{FOLDS}-fold study, {MODEL}, {args.epochs} epochs, train_threads 1, "
          f"snakemake --cores {args.cores} (data stages before training: {prepare:.1f} s)")
    print(f"one fold alone:   {one:6.1f} s wall (job {alone['s']:.1f} s, cpu "
          f"{alone['cpu_time']:.1f} s, max_rss {alone['max_rss']:.0f} MB)")
    print(f"{FOLDS} folds:         {ten:6.1f} s wall; {FOLDS} x one / {args.cores} = "
          f"{ideal:.1f} s; ratio {ideal / ten:.2f} (goal >= 0.85: "
          f"{'met' if ideal / ten >= 0.85 else 'NOT met'})")
    print(f"control, a one-thread torch loop: {control_alone:.1f} s alone, ratio "
          f"{control:.2f} for {args.cores} at once (1.00 on {args.cores} idle cores)")
    print("fold   job s   cpu s  max_rss MB  (side by side)")
    for fold, (_, row) in enumerate(side_by_side.iterrows()):
        print(f"{fold:>4} {row['s']:>7.1f} {row['cpu_time']:>7.1f} {row['max_rss']:>11.0f}")
    print(f"mean {side_by_side['s'].mean():>7.1f} {side_by_side['cpu_time'].mean():>7.1f} "
          f"{side_by_side['max_rss'].mean():>11.0f}  (peak max_rss "
          f"{side_by_side['max_rss'].max():.0f} MB)")


if __name__ == "__main__":
    main()
