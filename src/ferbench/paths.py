"""Every artifact path of a study, in one place.

The Snakefile's rules and the generated `dvc.yaml` both take their file names from these
templates, so the two views of the DAG cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ferbench import splits

# Dataset level: results/<dataset>/...
RAW = "{results}/{dataset}/raw"
MANIFEST = "{results}/{dataset}/manifest.csv"
INGEST_QUARANTINE = "{results}/{dataset}/quarantine.csv"
FACES_ARRAY = "{results}/{dataset}/faces/faces.npy"
FACES_TABLE = "{results}/{dataset}/faces/faces.csv"
FACES_SAMPLES = "{results}/{dataset}/faces/samples.png"
DETECTION = "{results}/{dataset}/detection.json"
#: BlazeFace's faces per image, found by rule mediapipe_detect in MediaPipe's own environment.
MEDIAPIPE_DETECTIONS = "{results}/{dataset}/faces/mediapipe.jsonl"

# Landmarks stage: 68 points per face crop, aligned row-for-row with FACES_ARRAY.
LANDMARKS_ARRAY = "{results}/{dataset}/landmarks.npy"
LANDMARKS_SAMPLES = "{results}/{dataset}/landmarks_samples.png"

# Protocol level: results/<dataset>/<protocol>/...
FOLDS = "{results}/{dataset}/{protocol}/folds.csv"
AUGMENT_ARRAY = "{results}/{dataset}/{protocol}/augment/fold{fold}.npy"
AUGMENT_TABLE = "{results}/{dataset}/{protocol}/augment/fold{fold}.csv"
# DE-Capsnet's per-class DCGAN faces of a fold's training role, and a sheet of them per class.
DCGAN_ARRAY = "{results}/{dataset}/{protocol}/dcgan/fold{fold}.npy"
DCGAN_TABLE = "{results}/{dataset}/{protocol}/dcgan/fold{fold}.csv"
DCGAN_SAMPLES = "{results}/{dataset}/{protocol}/dcgan/fold{fold}.png"

# Private inference (docs/privacy.md): the paper's linear classifier (projection B, mean b,
# class templates) trained on one fold, and its plaintext test accuracy.
PRIVATE_MODEL = "{results}/{dataset}/{protocol}/private/fold{fold}/classifier.npz"
PRIVATE_ACCURACY = "{results}/{dataset}/{protocol}/private/fold{fold}/accuracy.json"

# Model level: results/<dataset>/<protocol>/<model>/...
FOLD_DIR = "{results}/{dataset}/{protocol}/{model}/fold{fold}"
MODEL = FOLD_DIR + "/model.pt"
HISTORY = FOLD_DIR + "/history.csv"
RUN_INFO = FOLD_DIR + "/run.json"
CHECKPOINT = FOLD_DIR + "/checkpoint.pt"
METRICS = FOLD_DIR + "/metrics.json"
PREDICTIONS = FOLD_DIR + "/predictions.csv"
SUMMARY = "{results}/{dataset}/{protocol}/{model}/summary.json"

# Explain stage, on fold 0 of a study: attention heatmaps, t-SNE, and what they show.
STUDY_DIR = "{results}/{dataset}/{protocol}/{model}"
EXPLAIN_ATTENTION = STUDY_DIR + "/explain/attention.png"
EXPLAIN_TSNE = STUDY_DIR + "/explain/tsne.png"
EXPLAIN_INFO = STUDY_DIR + "/explain/explain.json"
EXPLAIN = (EXPLAIN_ATTENTION, EXPLAIN_TSNE, EXPLAIN_INFO)
EXPLAINED_FOLD = 0

# Study level.
REPORT = "{results}/report.html"
STUDY_METRICS = "{results}/metrics.json"
LOG = "{results}/logs/{rule}/{name}.log"
BENCHMARK = "{results}/benchmarks/{rule}/{name}.tsv"
BENCHMARK_DIR = "{results}/benchmarks"


@dataclass(frozen=True)
class Study:
    """One (dataset, protocol, model) cell of the results table."""

    dataset: str
    protocol: str
    model: str
    folds: int


def studies(config: dict) -> list[Study]:
    """Expand the config's `studies:` entries into one Study per model, in config order."""
    out = []
    for entry in config["studies"]:
        n_folds = splits.fold_count(config["protocols"][entry["protocol"]])
        for model in entry["models"]:
            out.append(Study(entry["dataset"], entry["protocol"], model, n_folds))
    return out


def fill(template: str, config: dict, **wildcards) -> str:
    """A concrete path from a template (wildcards left out stay as `{name}` for Snakemake)."""

    class Keep(dict):
        def __missing__(self, key):
            return "{" + key + "}"

    return template.format_map(Keep(results=config["results"], **wildcards))


def summaries(config: dict) -> list[str]:
    return [
        fill(SUMMARY, config, dataset=s.dataset, protocol=s.protocol, model=s.model)
        for s in studies(config)
    ]


def explanations(config: dict) -> list[str]:
    """Every study's explain-stage files, in study order."""
    return [fill(template, config, dataset=s.dataset, protocol=s.protocol, model=s.model)
            for s in studies(config) for template in EXPLAIN]


def beside_summary(template: str, summary_path) -> Path:
    """A study-level file (a STUDY_DIR template) of the study whose summary.json is given."""
    return Path(summary_path).parent / template.removeprefix(STUDY_DIR + "/")


@dataclass(frozen=True)
class WeightsSource:
    """The run a training job starts from; `fold` None means the job's own fold."""

    dataset: str
    protocol: str
    model: str
    fold: int | None


def weights_source(config: dict, dataset: str, protocol: str, model: str) -> WeightsSource | None:
    """What a training job starts from, if anything. Two kinds of DAG edge: a model that
    `starts_from` another (DAM-CNN's step 2 on the same fold's VGG-SERD), and a study's
    `pretrain:` (MobileNet-CL's stage 2 on fold 0 of the same model trained on the
    pretraining dataset, FER2013 in the paper)."""
    from ferbench.models import get  # torch: only where a model is named

    spec = get(model)
    if spec.starts_from:
        return WeightsSource(dataset, protocol, spec.starts_from, None)
    for entry in config["studies"]:
        pretrain = entry.get("pretrain")
        if (pretrain and spec.can_pretrain and model in entry["models"]
                and (entry["dataset"], entry["protocol"]) == (dataset, protocol)):
            return WeightsSource(pretrain["dataset"], pretrain["protocol"], model, 0)
    return None


def model_inputs(config: dict, dataset: str, model: str) -> dict[str, str]:
    """Named files a model reads beside the faces of `dataset` (trained or tested on): the
    landmarks its AU attention channel is drawn from."""
    from ferbench.models import get

    if get(model).extra_channels:
        return {"landmarks": fill(LANDMARKS_ARRAY, config, dataset=dataset)}
    return {}


def training_inputs(config: dict, dataset: str, protocol: str, model: str,
                    fold) -> dict[str, str]:
    """Named files a training job reads beyond the fold's faces and augmented copies: its
    model's channels, the weights it starts from (an ensemble's: its members'), the face
    table when gender-bound decoders need each face's gender, and the fold's DCGAN faces
    for models trained on them."""
    from ferbench.config import recipe
    from ferbench.models import get

    spec = get(model)
    extras = model_inputs(config, dataset, model)
    source = weights_source(config, dataset, protocol, model)
    if source:
        extras["init"] = fill(MODEL, config, dataset=source.dataset, protocol=source.protocol,
                              model=source.model, fold=fold if source.fold is None else source.fold)
    hyperparameters = recipe(config, dataset, protocol, model)  # once: Snakemake asks per job
    if spec.combines:  # an ensemble's members, trained on this fold by their own jobs
        extras["members"] = [fill(MODEL, config, dataset=dataset, protocol=protocol, model=name,
                                  fold=fold) for name in hyperparameters["members"]]
    if hyperparameters.get("gender_bound"):
        extras["faces_table"] = fill(FACES_TABLE, config, dataset=dataset)
    if spec.trains_on_dcgan:
        for key, template in (("dcgan_array", DCGAN_ARRAY), ("dcgan_table", DCGAN_TABLE)):
            extras[key] = fill(template, config, dataset=dataset, protocol=protocol, fold=fold)
    return extras


@dataclass(frozen=True)
class Training:
    """The training jobs of one model on one (dataset, protocol): folds `folds`."""

    dataset: str
    protocol: str
    model: str
    folds: tuple[int, ...]


def trainings(config: dict) -> list[Training]:
    """Every model the studies train, each after what it starts from: pretraining stages
    (fold 0 only), a model's first step (DAM-CNN's vgg_serd), an ensemble's members, then
    the studies' models."""
    from ferbench.config import members

    folds: dict[tuple[str, str, str], set[int]] = {}

    def add(dataset: str, protocol: str, model: str, wanted: set[int]) -> None:
        for member in members(config, dataset, protocol, model):
            add(dataset, protocol, member, wanted)
        source = weights_source(config, dataset, protocol, model)
        if source:
            add(source.dataset, source.protocol, source.model,
                wanted if source.fold is None else {source.fold})
        folds.setdefault((dataset, protocol, model), set()).update(wanted)

    for study in studies(config):
        add(study.dataset, study.protocol, study.model, set(range(study.folds)))
    return [Training(*key, tuple(sorted(wanted))) for key, wanted in folds.items()]


def test_dataset(config: dict, dataset: str, protocol: str) -> str:
    """The dataset whose faces a study is tested on: its own, or a cross-dataset protocol's."""
    return config["protocols"][protocol].get("test_dataset", dataset)


def study_datasets(config: dict) -> list[str]:
    """Datasets used by at least one study (to train or to test), in first-use order."""
    return list(dict.fromkeys(d for s in studies(config)
                              for d in (s.dataset, test_dataset(config, s.dataset, s.protocol))))


# Comparison stage, per (dataset, protocol): every model's intervals and calibration, every
# pair's paired tests (compare.study_statistics).
STATISTICS = "{results}/{dataset}/{protocol}/statistics.json"
# Near-duplicate leak audit, per (dataset, protocol): counts per fold and the closest pairs.
AUDIT = "{results}/{dataset}/{protocol}/audit.json"
AUDIT_PAIRS = "{results}/{dataset}/{protocol}/audit_pairs.png"


def study_models(config: dict) -> dict[tuple[str, str], list[str]]:
    """The models of each (dataset, protocol) over all `studies:` entries, in config order."""
    out: dict[tuple[str, str], list[str]] = {}
    for s in studies(config):
        models = out.setdefault((s.dataset, s.protocol), [])
        if s.model not in models:
            models.append(s.model)
    return out


def per_protocol(template: str, config: dict) -> list[str]:
    """A (dataset, protocol) template filled for every studied pair, in config order."""
    return [fill(template, config, dataset=d, protocol=p) for d, p in study_models(config)]


def beside_protocol(template: str, summary_path) -> Path:
    """A (dataset, protocol) file of the study whose summary.json is given."""
    return Path(summary_path).parent.parent / Path(template).name


def dataset_root(dataset: dict, raw_dir) -> Path:
    """Where a dataset's native layout lives: the user's copy, or what fetch wrote."""
    return Path(dataset["path"]) if dataset["source"] == "path" else Path(raw_dir)
