# `make test` and `make demo` set up everything from scratch on a fresh clone (see README).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
# The CPU build of torch 2.13.0 lies on this project's machines; elsewhere set TORCH_SPEC/TORCH_INDEX,
# e.g. TORCH_SPEC=torch TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
LLAMA_CPP_VERSION ?= 0.3.36
WHEELS ?= $(HOME)/.cache/llmforge/wheels
STAMP := $(VENV)/.llmforge-installed
PYTEST_ARGS ?=

.PHONY: install test test-slow test-all lint demo clean docs

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(PY) -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(VENV)/constraints.txt
	scripts/llama-cpp-wheel.sh $(PY) $(LLAMA_CPP_VERSION)
	$(PY) -m pip install -q -c $(VENV)/constraints.txt --find-links $(WHEELS) -e ".[all,dev]"
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check llmforge tests benchmarks scripts examples

test: install lint
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest $(PYTEST_ARGS)

test-slow: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -m slow $(PYTEST_ARGS)

test-all: install lint
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -m "" $(PYTEST_ARGS)

demo: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) scripts/demo.py

docs: install
	$(PY) scripts/gen_docs.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
