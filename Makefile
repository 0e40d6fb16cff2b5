# The three commands every user and CI needs.
#   make setup   idempotent: Debian packages (root), .venv, torch, this project, patched Horovod
#   make test    setup, then the whole pytest suite (slow and MPI tests included)
#   make demo    the main job on the synthetic world, end to end
SHELL := /bin/bash
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
export OMPI_ALLOW_RUN_AS_ROOT ?= 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM ?= 1
export OMPI_MCA_rmaps_base_oversubscribe ?= 1
export OMPI_MCA_mpi_yield_when_idle ?= 1
PYTEST_ARGS ?=

.PHONY: setup test demo bench reproduce clean

setup:
	@VENV=$(VENV) bash .ci/setup.sh

test: setup
	@PATH=$(VENV)/bin:$$PATH $(PY) -m pytest $(PYTEST_ARGS)

demo: setup
	@PATH=$(VENV)/bin:$$PATH $(PY) -m pixpro_of demo --out demo_out

reproduce: setup
	@PATH=$(VENV)/bin:$$PATH $(PY) -m pixpro_of reproduce --out reproduce_out

bench: setup
	@for b in bench/bench_*.py; do echo "== $$b"; PATH=$(VENV)/bin:$$PATH $(PY) $$b || exit 1; done

clean:
	rm -rf demo_out .pytest_cache
