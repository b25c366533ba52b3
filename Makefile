# Set-up and everyday commands. `make demo` and `make test` are the README's Quick start.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-all lint bench demo-model

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt -e . 2>&1 | grep -v "WARNING: Location" || true
	$(BIN)/python -c "import torch, mossvl; assert torch.__version__.startswith('2.13.0')"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m mossvl.demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	HF_HUB_OFFLINE=1 $(BIN)/pytest

test-all: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/pytest -m "slow or not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

# Retrain the shipped demo model from scratch on the CPU (~25 min), then evaluate it (docs/demo_model_eval.md).
demo-model: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/make_demo_model.py
