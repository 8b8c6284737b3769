# bertforge: `make demo` (the main job on the embedded default, CPU) and `make test` (all tests).
# Each target sets up what it needs (.venv) by itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test test-all test-slurm demo lint lint-shell bench clean

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

# A real one-node Slurm cluster (installed with apt-get when missing; needs root):
# run.sub phase 1 -> phase 2, a requeue, multi-task data preparation. See docs/slurm.md.
test-slurm: install
	PY=$(PY) bash tests/slurm/run_tests.sh $(PYTEST_ARGS)

demo: install
	@echo "make demo: the end-to-end demo (Wikipedia sample -> vocab -> shards -> two-phase pretraining"
	@echo "-> held-out MLM accuracy -> fill-mask -> plot) is not wired up yet; see issue 7."

lint: install lint-shell
	$(PY) -m ruff check bertforge tests *.py

# shellcheck (Debian package `shellcheck`) on every shell script, hadolint on the Dockerfiles.
lint-shell: install
	@command -v shellcheck >/dev/null || { echo "shellcheck missing: apt-get install -y shellcheck" >&2; exit 1; }
	git ls-files --cached --others --exclude-standard -z -- '*.sh' '*.sub' ':!:.venv*' | xargs -0 shellcheck -x -S style
	$(VENV)/bin/hadolint Dockerfile Dockerfile.cpu

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
