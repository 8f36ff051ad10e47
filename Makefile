# The contract: setup, run, test, lint, bench, e2e-kind.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test lint fmt typecheck bench e2e-kind clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

## The main job: start the stack, summarize the sample documents, print the summaries.
## With a model: make run SUMMARIZER=openai OPENAI_BASE_URL=http://127.0.0.1:8080/v1
##   [OPENAI_MODEL=NAME] [TIMEOUT_S=1800] (a model on a CPU takes minutes per document)
SUMMARIZER ?=
OPENAI_BASE_URL ?=
OPENAI_MODEL ?=
TIMEOUT_S ?=
run: setup
	$(BIN)/agentbus demo --workers 3 $(if $(SUMMARIZER),--summarizer $(SUMMARIZER)) \
	  $(if $(OPENAI_BASE_URL),--openai-base-url $(OPENAI_BASE_URL)) \
	  $(if $(OPENAI_MODEL),--openai-model $(OPENAI_MODEL)) \
	  $(if $(TIMEOUT_S),--timeout-s $(TIMEOUT_S))

## Every test tier this machine can run (kind skips itself without a cluster).
test: setup
	$(BIN)/pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check services tests bench
	$(BIN)/ruff format --check services tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

fmt: setup
	$(BIN)/ruff format services tests bench
	$(BIN)/ruff check --fix services tests bench

bench: setup
	$(BIN)/python -m bench

e2e-kind: setup
	$(BIN)/pytest -m kind

clean:
	rm -rf $(VENV) .agentbus .pytest_cache .mypy_cache .ruff_cache
