# The three commands every user and CI needs.
#   make setup   idempotent: Open MPI (Debian, as root), .venv, torch, this project, patched Horovod
#   make test    setup plus the test suite's own servers and tools (shellcheck, SLURM, Grid Engine,
#                OpenPBS: make setup-test), then make lint, then the whole pytest suite (slow and MPI
#                tests included)
#   make lint    ruff (lint and format check) over the tree, mypy over plumbing, hdf5_tools, launcher
#                (settings in pyproject.toml)
#   make demo    setup, then the main job on the synthetic world, end to end
SHELL := /bin/bash
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
export OMPI_ALLOW_RUN_AS_ROOT ?= 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM ?= 1
export OMPI_MCA_rmaps_base_oversubscribe ?= 1
export OMPI_MCA_mpi_yield_when_idle ?= 1
PYTEST_ARGS ?=

.PHONY: setup setup-test lint test demo bench reproduce clean gpu-wheels gpu-check-data

setup:
	@VENV=$(VENV) bash .ci/setup.sh

setup-test:
	@VENV=$(VENV) bash .ci/setup.sh --test

lint: setup-test
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .
	@$(VENV)/bin/mypy

test: setup-test lint
	@PATH=$(VENV)/bin:$$PATH $(PY) -m pytest $(PYTEST_ARGS)

demo: setup
	@PATH=$(VENV)/bin:$$PATH $(PY) -m pixpro_of demo --out demo_out

reproduce: setup
	@PATH=$(VENV)/bin:$$PATH $(PY) -m pixpro_of reproduce --out reproduce_out

bench: setup
	@for b in bench/bench_*.py; do echo "== $$b"; PATH=$(VENV)/bin:$$PATH $(PY) $$b || exit 1; done

clean:
	rm -rf demo_out .pytest_cache

# The device check (bench/gpu_check.py; docs/scale.md "The GPU check"): what the lent GPU machine
# lacks, prepared here and carried there (both folders are git-ignored; carry: gpu_wheels gpu_check_data).
#   make gpu-wheels      simplejpeg for CPython 3.12 on manylinux x86-64 (the device's Python)
#   make gpu-check-data  the synthetic world packed into shards (about 15 MB), on this CPU
GPU_WHEELS ?= simplejpeg==1.9.0
gpu-wheels:
	@mkdir -p gpu_wheels && python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d gpu_wheels $(GPU_WHEELS) && ls gpu_wheels

gpu-check-data: setup
	@$(PY) bench/gpu_check.py --prepare
