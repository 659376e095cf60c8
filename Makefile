# The commands a newcomer needs. `make train` generates the default sample if it is absent and
# trains the default tagger; `make test` runs the test suite. Both install into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; set TORCH='torch' (or a CUDA index) to keep your own build.
TORCH ?= torch==2.13.0
PIP_FLAGS ?= --quiet --prefer-binary

.PHONY: install sample train test lint format bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_FLAGS) --upgrade pip
	$(BIN)/pip install $(PIP_FLAGS) "$(TORCH)"
	$(BIN)/pip install $(PIP_FLAGS) -e ".[generate,dev]"
	touch $@

sample: install
	$(BIN)/softsymlit generate --config configs/generate.yaml

train: sample
	$(BIN)/softsymlit fit --config configs/top_tagging.yaml

test: install
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	for script in benchmarks/*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
