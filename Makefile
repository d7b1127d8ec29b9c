# Two commands do everything on a fresh machine (Python 3.11 + the package registries):
#   make demo   install, then run the default study on the embedded synthetic dataset
#   make test   install, then run the test suite (what CI runs)
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

.PHONY: install demo test lint clean

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
	$(BIN)/snakemake --cores all --configfile config/demo.yaml
	@echo "report: results/report.html   runs: $(BIN)/mlflow ui --backend-store-uri sqlite:///results/mlflow.db"

test: install
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/snakemake --lint --configfile config/demo.yaml
	$(BIN)/snakefmt --check .
	$(BIN)/ferbench dvc-yaml --check

clean:
	rm -rf results .snakemake
