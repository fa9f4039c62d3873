# Every target creates .venv on first use: torch==2.13.0 (CPU wheel) first, then the package.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test test-slow lint format train bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

# The test command CI runs: lint, then the default (non-slow) test suite.
test: $(STAMP)
	$(VENV)/bin/ruff check lewm_hf recipes tests benchmarks
	$(VENV)/bin/ruff format --check lewm_hf recipes tests benchmarks
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check lewm_hf recipes tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format lewm_hf recipes tests benchmarks
	$(VENV)/bin/ruff check --fix lewm_hf recipes tests benchmarks

# The main job: the default recipe (encoder phase, then the world model) on this machine, with
# one torch thread per core (`accelerate launch` alone runs one thread per process).
THREADS ?= $(shell nproc)
train: $(STAMP)
	$(VENV)/bin/accelerate launch --num_cpu_threads_per_process $(THREADS) recipes/train.py $(ARGS)

bench: $(STAMP)
	$(PY) benchmarks/walk_corpus.py
	$(PY) benchmarks/compliance_eval.py
	$(PY) benchmarks/trainer_overhead.py

clean:
	rm -rf outputs .pytest_cache
