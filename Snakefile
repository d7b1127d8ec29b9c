# ferbench: facial-expression-recognition benchmark workflow.
# Stages: fetch -> ingest -> faces -> folds -> augment -> train -> evaluate -> summarize -> report;
# train -> explain -> report (attention heatmaps, t-SNE); summarize -> compare -> report
# (intervals, paired tests, calibration); folds -> audit -> report (near-duplicate leaks);
# faces -> landmarks -> train/evaluate (AU attention maps) and report; folds -> dcgan -> train (DE-Capsnet's DCGAN faces);
# train -> train (DAM-CNN's step 2 on step 1, fine-tuning on a pretraining stage);
# folds -> private_classifier (asked for by path: the private-inference application).
import os
from pathlib import Path

from snakemake.utils import min_version

from ferbench import mediapipe_client, tracking_server

min_version("9.0")


# `snakemake --report report.zip`: Snakemake's provenance report of the figures rules mark.
report: "workflow/report/workflow.rst"


# Jobs run in the study's working folder; the MediaPipe worker's venv is the workflow's own.
_mediapipe_python = Path(workflow.basedir) / mediapipe_client.VENV / "bin" / "python"
if _mediapipe_python.is_file():
    os.environ.setdefault(mediapipe_client.PYTHON_VARIABLE, str(_mediapipe_python))


# No default configfile: a study is exactly its own file plus the schema's defaults
# (`--configfile params.yaml` for the demo, `--configfile my-study.yaml` for yours).
include: "workflow/rules/common.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/faces.smk"
include: "workflow/rules/landmarks.smk"
include: "workflow/rules/folds.smk"
include: "workflow/rules/augment.smk"
include: "workflow/rules/dcgan.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/compare.smk"
include: "workflow/rules/audit.smk"
include: "workflow/rules/explain.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/private.smk"


# Under a cluster executor these run on the submitting host, not in the queue: the download
# (compute nodes often have no internet) and the small aggregations of the folds' results.
localrules:
    all,
    fetch,
    summarize,
    compare,
    report,


rule all:
    default_target: True
    input:
        report_outputs(),


# Jobs on other machines log to a tracking server started for the run, not to one SQLite
# file on a shared file system (ferbench.tracking_server).
onstart:
    if tracking_server.wanted(config, workflow.local_exec):
        tracking_server.start(config)


onsuccess:
    tracking_server.stop()


onerror:
    tracking_server.stop()
