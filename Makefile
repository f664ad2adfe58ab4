# The two commands of the README. Each creates the virtual environment if it is missing.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
# pip takes the local CPU wheel when one is on disk (see RAY-NOTES); else the registry's 2.13.0
TORCH   := torch==2.13.0

.PHONY: demo test test-unit serve venv clean

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH) $(wildcard /opt/wheels/torch-2.13.0+cpu-*.whl)

# the project and its dev extra, again whenever pyproject.toml changes (a new pin reaches an existing venv)
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

## 1. set up a fresh machine and run the main job (simulate -> prepare -> pretrain -> reward -> post-train -> evaluate -> register)
demo: venv
	$(BIN)/python -m jobs.pipeline --config configs/pipeline.yaml $(ARGS)

## 2. run the tests (a real local Ray cluster, a real MLflow store)
test: venv
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest tests -p no:cacheprovider $(ARGS)

## tests/unit alone: no Ray cluster (model, losses, decoding, click models, statistics, serving logic, layering...)
test-unit: venv
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest tests/unit -p no:cacheprovider $(ARGS)

## serve the registered champion vs NAR4Rec (after `make demo`; serve/config.yaml): http://127.0.0.1:8000 through
## Serve's proxy, and the fast path, http://127.0.0.1:8001, the Router's own port (Serve's direct ingress:
## `python -m serve.targets --host 127.0.0.1` prints it; docs/serving.md). A stopping replica drains for 2 s, not
## Serve's 30 (the time a cloud load balancer needs to deregister it; on loopback there is none)
serve: venv
	RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT=8001 RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S=2 \
	  $(BIN)/serve run serve/config.yaml

clean:
	rm -rf runs mlflow.db mlartifacts
