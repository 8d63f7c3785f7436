# Two commands on a fresh machine: `make demo` runs the main job, `make test` runs the tests.
PYTHON ?= python3
PORT ?= 3000
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint ui

$(BIN)/shopify-pipeline: pyproject.toml deploy/requirements.txt
	bash scripts/ensure-prerequisites.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The runtime dependencies at the versions the image installs (deploy/requirements.txt, checked by a test).
	$(BIN)/pip install --quiet -c deploy/requirements.txt -e '.[test]'
	$(BIN)/shopify-pipeline local-dynamodb --fetch-only
	touch $@

setup: $(BIN)/shopify-pipeline

demo: setup
	$(BIN)/shopify-pipeline demo

test: setup
	$(BIN)/ruff check shopify_pipeline shopify_pipeline_tests benchmarks
	$(BIN)/pytest -q

ui: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/shopify-pipeline ui --port $(PORT)
