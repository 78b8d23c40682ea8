# quantadv developer entry points. Every target installs what it needs itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0

.PHONY: setup data test lint demo bench bench-deps clean

$(BIN)/quantadv: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch is pinned here (it lies on local disk); the package itself accepts torch>=2.2.
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(BIN)/quantadv data

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package when apt is usable as root.
data:
	@if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
	      || echo "warning: could not install dataset-fashion-mnist; see 'quantadv data list'"; \
	  else echo "note: Fashion-MNIST not installed and apt-get not usable; see 'quantadv data list'"; fi; \
	fi

lint: $(BIN)/quantadv
	$(BIN)/ruff check src tests benchmarks scripts examples

test: setup lint
	$(BIN)/python -m pytest

# The main job (also 'quantadv demo'): run the demo experiment into results/demo.db, then report.
demo: setup
	$(BIN)/quantadv run configs/demo.yaml
	$(BIN)/quantadv report results/demo.db --out report/demo

# Peers for the speed comparison (torchattacks without its torchvision dependency, which it does not need here).
bench-deps: setup
	$(BIN)/pip install -q foolbox
	$(BIN)/pip install -q --no-deps torchattacks

bench: bench-deps
	$(BIN)/python benchmarks/attack_speed.py
	$(BIN)/python benchmarks/runner_overhead.py
	$(BIN)/python benchmarks/quantization.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
