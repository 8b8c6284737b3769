# bertforge: `make demo` (the main job on the embedded default, CPU), `make test` (the fast suite),
# `make test-acceptance` (the slow checks on real data behind the figures in docs/); .ci/run runs
# all of them, NVIDIA's command lines and the Slurm tests.
# Each target sets up what it needs (.venv) by itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install install-serve test test-acceptance test-nvidia test-all test-slurm test-resume-stress demo demo-qa serve-demo lint lint-shell bench clean bench-quality bench-downstream docs-figures

install: $(STAMP)

# NVIDIA's LDDL, for the test that its own loader reads our Parquet shards. Without its
# dependencies: they pin transformers 4.16 and need MPI (dask-mpi, mpi4py), none of which
# lddl.torch imports; what it imports (torch, pyarrow, numpy, transformers) is in [dev].
LDDL := lddl==0.1.0

# Reinstall only when the dependency list changes; the package itself is editable.
# A venv whose creation was interrupted has a python but no pip: recreate it (--clear).
$(STAMP): pyproject.toml Makefile
	@$(PY) -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv --clear $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps $(LDDL)
	@touch $(STAMP)

# The Triton server side (nvidia-pytriton pins numpy<2) lives in its own venv; bertforge goes in
# without dependencies (the server needs no torch). Used by the `triton` tests and serve-demo.
VENV_TRITON := .venv-triton
TRITON_STAMP := $(VENV_TRITON)/.installed
install-serve: $(TRITON_STAMP)
$(TRITON_STAMP): deploy/triton/requirements-server.txt pyproject.toml
	@$(VENV_TRITON)/bin/python -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv --clear $(VENV_TRITON)
	$(VENV_TRITON)/bin/python -m pip install --quiet --disable-pip-version-check -r deploy/triton/requirements-server.txt
	$(VENV_TRITON)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $(TRITON_STAMP)

test: install install-serve
	$(PY) -m pytest -q -m "not slow and not slurm" $(PYTEST_ARGS)

# The acceptance checks that back figures in docs/ (the full demo, the real Wikipedia sample, MiniLM on
# SST-2 and SQuAD, the GPU harness on the CPU): the tests marked `slow`, except NVIDIA's command lines
# (make test-nvidia runs those); tens of minutes on 2 cores. --no-skips: a check that cannot run fails
# instead of skipping. .ci/run runs it.
test-acceptance: install
	$(PY) -m pytest -q -m "slow and not slurm" --no-skips --ignore=tests/integration/test_nvidia_commands.py \
		$(PYTEST_ARGS)

# Every command line of NVIDIA's READMEs and scripts, run unchanged (tests marked `slow` in
# test_nvidia_commands.py; a few minutes on 2 cores). .ci/run runs it.
test-nvidia: install
	$(PY) -m pytest -q -m slow --no-skips tests/integration/test_nvidia_commands.py $(PYTEST_ARGS)

test-all: install install-serve
	$(PY) -m pytest -q $(PYTEST_ARGS)

# A real one-node Slurm cluster (installed with apt-get when missing; needs root):
# run.sub phase 1 -> phase 2, a requeue, multi-task data preparation. See docs/slurm.md.
test-slurm: install
	PY=$(PY) bash tests/slurm/run_tests.sh $(PYTEST_ARGS)

# Every bit-exact resume test (single process, torchrun, rank kill, SIGTERM/SIGKILL, full disk,
# the Slurm requeue chain) RESUME_STRESS_N times, each round in fresh processes; 0 failures
# expected. CI runs 2 rounds (with make test and make test-slurm, 3 runs of each test).
# See docs/reliability.md ("What is bit-exact").
RESUME_STRESS_N ?= 20
test-resume-stress: install
	$(PY) tests/resume_stress.py --repeat $(RESUME_STRESS_N) --slurm

# The whole pipeline on the real Wikipedia sample, CPU only (~8 min on 2 cores): data ->
# two-phase pretraining -> held-out MLM accuracy -> fill-mask -> plot, all in $(DEMO_DIR).
# Ctrl-C and `make demo` again resumes. A preset of the real scripts: see scripts/demo.sh.
DEMO_DIR ?= results/demo
demo: install
	PYTHON=$(PY) bash scripts/demo.sh $(DEMO_DIR)

# Fine-tune the real pretrained MiniLM (or INIT_CHECKPOINT=...) on a SQuAD-format set written
# from the demo's Wikipedia articles, report EM/F1 on held-out articles, answer a question
# with inference.py. Offline; see scripts/demo_qa.sh.
demo-qa: install
	PYTHON=$(PY) bash scripts/demo_qa.sh $(DEMO_DIR)

# Fine-tune a small demo QA model (or use SERVE_DEMO_ARGS="--init_checkpoint CKPT"), export it,
# serve it with a real Triton server on 127.0.0.1 and answer a question over HTTP and gRPC.
serve-demo: install install-serve
	BERTFORGE_REAL_DATA=$${BERTFORGE_REAL_DATA:-../shared/data} $(PY) deploy/triton/serve_demo.py $(SERVE_DEMO_ARGS)

# The figures of docs/benchmarks.md on this machine: data preparation, the pretraining step, memory
# and loader against transformers (~25 min on 2 CPU cores; sample shards are made in $(BENCH_DATA)
# first), then fine-tuning (SST-2, SQuAD), evaluation and QA inference against transformers
# (~15 min). The fp32 CPU GEMM choice is measured afresh for the run (its own cache directory).
# On a GPU: bench/bench_train.py / bench_finetune.py --device cuda --precision fp16; to check
# a GPU machine's claims: bash bench/gpu_check.sh.
BENCH_DATA ?= results/benchdata
bench: install
	@test -d $(BENCH_DATA)/phase1_hdf5 || PYTHON=$(PY) bash data/create_datasets_from_start.sh sample $(BENCH_DATA)
	rm -rf $(BENCH_DATA)/xdg_cache
	BERTFORGE_REAL_DATA=$${BERTFORGE_REAL_DATA:-../shared/data} $(PY) bench/bench_data.py --write docs/benchmarks.md
	XDG_CACHE_HOME=$(BENCH_DATA)/xdg_cache BERTFORGE_REAL_DATA=$${BERTFORGE_REAL_DATA:-../shared/data} \
		$(PY) bench/bench_train.py --data $(BENCH_DATA) --repeats 7 --distinct_batches 7 --write docs/benchmarks.md
	$(PY) bench/bench_loader.py --data $(BENCH_DATA) --write docs/benchmarks.md
	XDG_CACHE_HOME=$(BENCH_DATA)/xdg_cache BERTFORGE_REAL_DATA=$${BERTFORGE_REAL_DATA:-../shared/data} \
		$(PY) bench/bench_finetune.py --write docs/benchmarks.md

# Model quality (docs/benchmarks.md, sections bench_quality and bench_downstream), from the Wikipedia
# sample's phase-1 shards made with Google's uncased vocab in $(QUALITY_DATA) (once, ~1 min).
# bench-quality: time to held-out MLM accuracy, bertforge vs HF Trainer at 3 learning rates, 20 min of
# wall time per run (~1.5 h in all on 2 idle cores; BENCH_QUALITY_ARGS="--budget 60" for a smoke run).
# bench-downstream: SST-2 and SQuAD fine-tuning from bertforge's pretraining vs random init (~1-1.5 h).
QUALITY_DATA ?= results/qualitydata
REAL_DATA = $${BERTFORGE_REAL_DATA:-../shared/data}
$(QUALITY_DATA)/phase1_holdout_hdf5/.num_samples.json: | install
	VOCAB_FILE=$(REAL_DATA)/vocab/bert-base-uncased-vocab.txt SKIP_PHASE2=1 PYTHON=$(PY) \
		bash data/create_datasets_from_start.sh sample $(QUALITY_DATA)
bench-quality: install $(QUALITY_DATA)/phase1_holdout_hdf5/.num_samples.json
	BERTFORGE_REAL_DATA=$(REAL_DATA) $(PY) bench/bench_quality.py --data $(QUALITY_DATA) \
		--write docs/benchmarks.md $(BENCH_QUALITY_ARGS)
bench-downstream: install $(QUALITY_DATA)/phase1_holdout_hdf5/.num_samples.json
	BERTFORGE_REAL_DATA=$(REAL_DATA) $(PY) bench/bench_downstream.py --data $(QUALITY_DATA) \
		--write docs/benchmarks.md $(BENCH_DOWNSTREAM_ARGS)

# The figures docs/ quotes from acceptance runs (demo.md, finetuning.md, pretraining.md): runs the tests that
# check them (~15 min on 2 cores), then rewrites their marked sections (bench/bench_acceptance.py).
docs-figures: install
	BERTFORGE_REAL_DATA=$(REAL_DATA) $(PY) bench/bench_acceptance.py

lint: install lint-shell
	$(PY) -m ruff check bertforge tests bench deploy *.py

# shellcheck (Debian package `shellcheck`) on every shell script, hadolint on the Dockerfiles.
lint-shell: install
	@command -v shellcheck >/dev/null || { echo "shellcheck missing: apt-get install -y shellcheck" >&2; exit 1; }
	git ls-files --cached --others --exclude-standard -z -- '*.sh' '*.sub' ':!:.venv*' | xargs -0 shellcheck -x -S style
	$(VENV)/bin/hadolint Dockerfile Dockerfile.cpu

clean:
	rm -rf $(VENV) $(VENV_TRITON) *.egg-info .pytest_cache .ruff_cache
