# mmserve: the two commands a new user runs are `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
MMSERVE_DATA_DIR ?= $(HOME)/.mmserve
export MMSERVE_DATA_DIR

include helm/tools.mk

.PHONY: serve test install lint mlflow-ui train-captioning eval-captioning bench clean

# Re-install only when the project's metadata changes.
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

serve: install
	$(BIN)/mmserve serve --host $(HOST) --port $(PORT)

test: install lint helm-tools
	$(BIN)/python -m pytest -q -ra

lint: install
	$(BIN)/ruff check .

mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(MMSERVE_DATA_DIR)/mlflow.db \
		--default-artifact-root $(MMSERVE_DATA_DIR)/mlartifacts --host $(HOST) --port 5000

train-captioning: install
	$(BIN)/mmserve train captioning --output-dir plugins/captioning/weights --no-register

eval-captioning: install
	$(BIN)/mmserve eval captioning --model-dir plugins/captioning/weights

# Serving benchmark: mmserve vs LitServe, Ray Serve, plain FastAPI and the bare model.
# Writes bench/results/latest.{md,png,json}; BENCH_QUICK=1 for the reduced (<5 min) run.
$(BIN)/.bench-installed: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@

bench: $(BIN)/.bench-installed
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache
