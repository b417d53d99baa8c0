# Two commands on a fresh machine: `make run` (the whole pipeline on the embedded default)
# and `make test`. Both create .venv and install the project into it first (idempotent).

PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed-stamp

# The official GSM8K files beside the project, when present; otherwise the hub is used.
SHARED_GSM8K := $(abspath $(CURDIR)/../shared/data/gsm8k)
ifneq ($(wildcard $(SHARED_GSM8K)/train.jsonl),)
export GSM8K_DIR ?= $(SHARED_GSM8K)
endif

# Offline-safe defaults (see ../shared/docs/stack-notes.md); `make run HF_HUB_OFFLINE=0`
# lets a machine with a hub download models named in params.yaml.
export HF_HUB_OFFLINE ?= 1
export HF_HOME ?= $(CURDIR)/.cache/huggingface
export MLFLOW_DISABLE_TELEMETRY ?= true
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
export DVC_NO_ANALYTICS ?= 1
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PATH := $(BIN):$(PATH)

.PHONY: install run test test-unit test-e2e bench clean mlflow-ui

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and exactly: its CPU wheel is on local disk; other versions pull GBs of CUDA.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(STAMP)

# dvc repro runs what is out of date (the sweep too when runs/sweep is missing); the
# reconcile step registers the champion in this MLflow store if it lacks it (a new store,
# run folders from `dvc pull`), training nothing.
run: install
	dvc repro
	python -m pipelines.sweep --reconcile
	@echo; echo "The sweep (metrics/sweep/table.md; dvc metrics show; MLflow: make mlflow-ui):"
	@cat metrics/sweep/table.md

test: install
	pytest -q

test-unit: install
	pytest -q -m "not e2e and not server"

test-e2e: install
	pytest -q -m "e2e or server"

bench: install
	$(BIN)/pip install --quiet -e ".[bench]"
	python benchmarks/bench_data.py

mlflow-ui: install
	mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --host 127.0.0.1 --port 5000

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
