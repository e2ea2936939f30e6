# Self-documenting Makefile: `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# No telemetry from any library, ever; one BLAS thread for implicit.
export FEAST_USAGE := False
export BENTOML_DO_NOT_TRACK := true
export DO_NOT_TRACK := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export OPENBLAS_NUM_THREADS := 1
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false

.PHONY: help install demo test test-fast lint format clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else \
		"Python >= 3.11 is needed; set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml requirements.lock | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[dev]"
	@touch $@

install: $(STAMP) ## Create .venv if missing and install the project (pinned)

DEMO_DIR ?= .recsys-demo

demo: $(STAMP) ## Run the main job: simulated days, faults injected and healed (fresh $(DEMO_DIR))
	rm -rf $(DEMO_DIR)
	RECSYS_DATA_DIR=$(DEMO_DIR) $(BIN)/recsys demo

test: $(STAMP) ## Run the whole test suite (fails when no test ran)
	@$(BIN)/python -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

test-fast: $(STAMP) ## Run the suite without the slow end-to-end tests
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## ruff fix and format
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean: ## Remove the local data directories (.recsys, .recsys-demo): lake, registry, logs
	rm -rf .recsys $(DEMO_DIR)
