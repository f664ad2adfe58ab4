# The two commands of the README. Each creates the virtual environment if it is missing.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
# pip takes the local CPU wheel when one is on disk (see RAY-NOTES); else the registry's 2.13.0
TORCH   := torch==2.13.0

.PHONY: demo test test-unit venv clean

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH) $(wildcard /opt/wheels/torch-2.13.0+cpu-*.whl)
	$(BIN)/pip install -q -e ".[dev]"

venv: $(BIN)/python

## 1. set up a fresh machine and run the main job (simulate -> prepare -> pretrain -> reward -> post-train -> evaluate -> register)
demo: venv
	$(BIN)/python -m jobs.pipeline --config configs/pipeline.yaml $(ARGS)

## 2. run the tests (a real local Ray cluster, a real MLflow store)
test: venv
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest tests -p no:cacheprovider $(ARGS)

## the tests that need no Ray cluster (model, losses, decoding, click models, statistics, layering...)
test-unit: venv
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest tests -m "not integration" -p no:cacheprovider $(ARGS)

clean:
	rm -rf runs mlflow.db mlartifacts
