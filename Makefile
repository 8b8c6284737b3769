# bertforge: `make demo` (the main job on the embedded default, CPU) and `make test` (all tests).
# Each target sets up what it needs (.venv) by itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test test-all demo lint bench clean

install: $(STAMP)

# Reinstall only when the dependency list changes; the package itself is editable.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

test: install
	$(PY) -m pytest -q -m "not slow and not slurm" $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: install
	@echo "make demo: the end-to-end demo (Wikipedia sample -> vocab -> shards -> two-phase pretraining"
	@echo "-> held-out MLM accuracy -> fill-mask -> plot) is not wired up yet; see issue 7."

lint: install
	$(PY) -m ruff check bertforge tests *.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
