# Set-up and everyday commands. `make demo` and `make test` are the README's Quick start.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

LATEST := .venv-latest

.PHONY: setup demo demo-realtime test test-all test-latest lint demo-model demo-realtime-model

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt -e . 2>&1 | grep -v "WARNING: Location" || true
	$(BIN)/python -c "import torch, mossvl; assert torch.__version__.startswith('2.13.0')"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m mossvl.demo

# Stream the bundled clip through a realtime session of the realtime demo model, in real time (6 s).
demo-realtime: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/mossvl realtime --source video --video src/mossvl/assets/samples/stream.mp4 \
		--sample-fps 2 --prompt "Tell me when a red shape appears." --show-silence

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	HF_HUB_OFFLINE=1 $(BIN)/pytest

# Golden parity and the transformers journey on the newest versions pyproject.toml allows (torch stays the
# local CPU build: a newer one would be a CUDA download).
$(LATEST)/.installed: pyproject.toml
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q --disable-pip-version-check torch==2.13.0 2>&1 | grep -v "WARNING: Location" || true
	$(LATEST)/bin/pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 | grep -v "WARNING: Location" || true
	$(LATEST)/bin/pip list --disable-pip-version-check 2>/dev/null | grep -iE "^(torch|transformers|tokenizers|accelerate|peft) "
	touch $(LATEST)/.installed

test-latest: $(LATEST)/.installed
	HF_HUB_OFFLINE=1 $(LATEST)/bin/pytest -p no:cacheprovider tests -k "golden or journey"

test-all: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/pytest -m "slow or not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

# Retrain the shipped demo model from scratch on the CPU (~25 min), then evaluate it (docs/demo_model_eval.md).
demo-model: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/make_demo_model.py

# Retrain the shipped realtime demo model from the demo model on the CPU (<30 min), then evaluate it
# (docs/demo_realtime_model_eval.md).
demo-realtime-model: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/make_demo_realtime_model.py
