# neuromorph: `make demo` and `make test` work on a fresh machine (they create .venv and install everything).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test test-all lint format bench bench-deps clean

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The CPU torch first, so no dependency can pull a CUDA build or torchvision.
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]" "$(TORCH_SPEC)"
	# torchattacks: the test oracle of robustness/attacks.py; --no-deps because its metadata pulls torchvision
	$(PIP) install -q --no-deps "torchattacks==3.5.1"
	@if $(PIP) list 2>/dev/null | grep -qi '^torchvision '; then echo "torchvision was pulled in: remove that dependency" >&2; exit 1; fi
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/neuromorph run store-recall --quick

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

test-all: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m ""

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/alif_cpu.py
	$(PY) benchmarks/analog.py
	$(PY) benchmarks/rewiring.py
	$(PY) benchmarks/diffusion.py
	$(VENV)/bin/neuromorph bench

# Peer libraries for `neuromorph bench`, installed so that the CPU torch stays: the `bench` extra holds
# snnTorch (no declared dependencies) and the pure-Python dependencies of Norse and SpikingJelly; Norse and
# SpikingJelly themselves go in with --no-deps (their metadata requires torchvision, which replaces torch).
bench-deps: $(STAMP)
	$(PIP) install -q -e ".[bench]" "$(TORCH_SPEC)"
	$(PIP) install -q --no-deps "norse==1.1.0" "spikingjelly==2.0.0"
	@if $(PIP) list 2>/dev/null | grep -qi '^torchvision '; then echo "torchvision was pulled in" >&2; exit 1; fi
	$(PY) -c "import torch, snntorch, norse.torch, spikingjelly.activation_based; print('torch', torch.__version__)"

clean:
	rm -rf $(VENV) build src/*.egg-info
