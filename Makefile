# Two commands do everything on a fresh machine (Python 3.11 + the package registries):
#   make demo   install, then run the default study on the embedded synthetic dataset
#   make test   install, then run the test suite (what CI runs)
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: install demo test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --cores all
	@echo "report: results/report.html   runs: $(BIN)/mlflow ui --backend-store-uri sqlite:///results/mlflow.db"

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check .
	$(BIN)/ferbench dvc-yaml --check

clean:
	rm -rf results .snakemake
