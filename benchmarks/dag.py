"""How long Snakemake takes to plan the full study matrix: dry run, and no-op when all is built.

The matrix is 6 models x 5 datasets x 10 folds (300 train + 300 evaluate jobs): six registered
models the workflow can feed today (the AU-attention models need their attention channel),
under one subject-independent 10-fold protocol, on 5 `source: generate` synthetic stand-ins.

No-op: every output the DAG lists (`snakemake --summary`) is created empty, `snakemake --touch
--forceall` then gives them modification times in DAG order, and a plain `snakemake` run must
find nothing to do.

    python benchmarks/dag.py [--repeat 3]     # goal: under 5 s each
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DATASETS = 5
PROTOCOLS = 1
FOLDS = 10
MODELS = ("deepfer", "deep_emotion", "mobilenet_cl", "vgg16", "rccnet", "damcnn")


def matrix_config() -> dict:
    """The default config widened to 5 datasets x 6 models x 10 folds."""
    config = yaml.safe_load((ROOT / "params.yaml").read_text())
    template = config["datasets"]["synthetic"]
    config["datasets"] = {f"synthetic{i}": template for i in range(DATASETS)}
    protocol = {**config["protocols"]["subject_5fold"], "folds": FOLDS}
    config["protocols"] = {f"subject_10fold_{p}": protocol for p in range(PROTOCOLS)}
    config["studies"] = [{"dataset": d, "protocol": p, "models": list(MODELS)}
                         for d in config["datasets"] for p in config["protocols"]]
    config["models"] = {m: config["models"].get(m, {}) for m in MODELS}
    return config


def snakemake(workdir: Path, *args: str, cores: int = 2) -> tuple[float, str]:
    """Wall time and output of one `snakemake` call on the repository's Snakefile, with
    `workdir`'s study.yaml (benchmarks/parallel_folds.py runs its study through it too)."""
    cmd = [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory",
           str(workdir), "--cores", str(cores), f"--configfile={workdir / 'study.yaml'}", *args]
    environment = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=workdir, env=environment, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, done.stdout + done.stderr


def job_counts(dry_run_output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run."""
    table = dry_run_output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    rows = (line.split() for line in table.splitlines())
    return {row[0]: int(row[1]) for row in rows if len(row) == 2 and row[1].isdigit()}


def create_stand_ins(workdir: Path) -> None:
    """An empty file (a folder for `directory()` outputs) for every output of the DAG."""
    _, summary = snakemake(workdir, "--summary")
    rows = [line.split("\t") for line in summary.splitlines() if line.count("\t") >= 5]
    for output, _date, rule, *_ in rows:
        if output == "output_file":  # the header
            continue
        path = workdir / output
        if rule == "fetch":  # the raw dataset folder
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timings per measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "study.yaml").write_text(yaml.safe_dump(matrix_config()))

        dry = [snakemake(workdir, "-n") for _ in range(args.repeat)]
        counts = job_counts(dry[0][1])
        print(f"matrix: {DATASETS} datasets x {PROTOCOLS} protocol x {len(MODELS)} models x "
              f"{FOLDS} folds")
        print("jobs:", ", ".join(f"{rule} {n}" for rule, n in counts.items()))
        studies = DATASETS * PROTOCOLS * len(MODELS) * FOLDS
        # damcnn brings its step 1 (vgg_serd), trained per fold but not evaluated as a study.
        assert counts["evaluate"] == studies, counts
        assert counts["train"] == studies + DATASETS * PROTOCOLS * FOLDS, counts

        create_stand_ins(workdir)
        touch_seconds, _ = snakemake(workdir, "--touch", "--forceall")
        noop = [snakemake(workdir) for _ in range(args.repeat)]
        assert all("Nothing to be done" in out for _, out in noop), noop[0][1][-2000:]

    def report(name: str, runs) -> None:
        times = sorted(seconds for seconds, _ in runs)
        print(f"{name:<9} best {times[0]:.2f} s, median {times[len(times) // 2]:.2f} s "
              f"over {len(times)} runs")

    report("dry run", dry)
    report("no-op", noop)
    print(f"(--touch of every output once: {touch_seconds:.2f} s)")


if __name__ == "__main__":
    main()
