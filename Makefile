# Two commands: `make run` (set up, then start the server and web UI) and `make test` (set up, then test).
# Both create .venv on first use; later runs reuse it and only reinstall when pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test install lint typecheck bench browser clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# torch first and pinned: it must come from the CPU build, not a multi-GB CUDA wheel
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/llmforge serve $(ARGS)

# Headless Chromium for the browser tests (Debian packages).
browser:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
		echo "warning: could not install chromium; browser tests will be skipped"

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: install
	$(BIN)/mypy

test: install browser lint typecheck
	$(BIN)/pytest $(ARGS)

bench: install
	$(BIN)/python bench/local_decode.py

clean:
	rm -rf $(VENV) .llmforge .pytest_cache .mypy_cache .ruff_cache
