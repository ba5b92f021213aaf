# The README's two commands: `make run` (the main job end to end) and `make test` (the suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test test-fast lint docs check-wheel doctor train evaluate benchmark clean

# requirements.txt = requirements-runtime.txt + -train + -dev (the suite needs all three).
$(STAMP): requirements.txt requirements-runtime.txt requirements-train.txt requirements-dev.txt pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

run: setup
	scripts/run-demo

test: setup
	$(BIN)/pytest -q -ra

test-fast: setup
	$(BIN)/pytest -q -ra -m "not kafka and not slow and not registry"

lint: setup
	$(BIN)/ruff check consumer models schemas training tests benchmarks

# docs/configuration.md's settings table, regenerated from consumer/config.py (tests/test_settings_doc.py checks it)
docs: setup
	$(BIN)/python -m consumer.settings_doc

# The wheel installed (not editable) into a fresh venv runs `shelver categorize` (--full: real install).
check-wheel: setup
	PYTHON=$(BIN)/python scripts/check-wheel $(CHECK_WHEEL_ARGS)

doctor: setup
	$(BIN)/shelver doctor

train: setup
	$(BIN)/shelver train

evaluate: setup
	$(BIN)/shelver evaluate

# throughput per engine and mode, latency at 50%/80% load → reports/benchmark.md + .png (≈ 5 min; own broker)
benchmark: setup
	$(BIN)/python benchmarks/run_all.py

clean:
	-scripts/kafka-local stop
	-scripts/registry-local stop
	rm -rf .kafka .cache
