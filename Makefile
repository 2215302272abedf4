# The README's commands. `make test` is what .ci/run calls.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup data test test-slow lint bench train clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

setup: $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'

data:
	bash scripts/install-data.sh

test: setup data
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m steadygrad.native
	MPLBACKEND=agg $(BIN)/python -m pytest -q -n 2

test-slow: setup data
	MPLBACKEND=agg $(BIN)/python -m pytest -q -m 'slow or study'

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

train: setup data
	$(BIN)/steadygrad train --preset reference --epochs 10 --threads 1 --out runs/reference

# Side-by-side epoch timings (add `python -m benchmarks.setup_alternatives` first to include
# Keras and JAX), inference latency, monitor overhead, the doctor's probe time and the GEMM.
bench: setup data
	$(BIN)/python -m benchmarks.epoch --with-alternatives --threads 1
	$(BIN)/python -m benchmarks.inference
	$(BIN)/python -m benchmarks.monitor_overhead --threads 1
	$(BIN)/python -m benchmarks.doctor_probe
	$(BIN)/python -m benchmarks.gemm

clean:
	rm -rf $(VENV) runs build dist *.egg-info
