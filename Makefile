# Two commands for a newcomer: `make serve` and `make test`. Everything they need installs itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: serve test install install-test js-deps demo-js-deps system-deps bench clean

$(BIN)/python:
	@echo "creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Two stamps: .installed-serve (the server alone, `make serve`) and .installed (server + test extras,
# `make test`); the test install covers serving too, so it touches both.
$(VENV)/.installed-serve: pyproject.toml | $(BIN)/python
	@echo "installing the server's dependencies (first run: about a minute)…"
	$(BIN)/pip install --quiet -e .
	@touch $@

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@echo "installing the server's and the tests' dependencies (first run: a few minutes)…"
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@ $(VENV)/.installed-serve

install: $(VENV)/.installed

tests/js/node_modules/.package-lock.json: tests/js/package-lock.json
	npm ci --prefix tests/js --no-audit --no-fund

# The browser recorder library (clients/js): its tests, and the socket.io-client the demo page loads.
clients/js/node_modules/.package-lock.json: clients/js/package-lock.json
	npm ci --prefix clients/js --no-audit --no-fund

# The ingest benchmark against a Node.js server (benchmarks/ingest; its smoke test is tests/test_bench_ingest.py).
benchmarks/ingest/node_modules/.package-lock.json: benchmarks/ingest/package-lock.json
	npm ci --prefix benchmarks/ingest --no-audit --no-fund

js-deps: tests/js/node_modules/.package-lock.json clients/js/node_modules/.package-lock.json \
	benchmarks/ingest/node_modules/.package-lock.json

# `make serve` installs the demo page's socket.io-client when it can; without npm (or a registry) the server still starts.
demo-js-deps:
	@if ! command -v npm >/dev/null 2>&1; then \
		echo "note: npm not found: the demo page needs clients/js/node_modules (npm ci --prefix clients/js); the server starts without it"; \
	else \
		$(MAKE) -s --no-print-directory clients/js/node_modules/.package-lock.json \
			|| echo "note: npm ci --prefix clients/js failed: the demo page may not load socket.io-client; the server starts anyway"; \
	fi

# The real-browser tests need Debian's chromium, espeak-ng and sox, the Firefox one firefox-esr and PulseAudio (its
# microphone: a null sink whose monitor Firefox records); the multi-node test (tests/test_topology.py) nginx.
# As root, install the missing ones; otherwise say so, and that test skips with the reason. Each entry is package:command.
SYSTEM_PACKAGES := espeak-ng:espeak-ng sox:sox chromium:chromium nginx:nginx firefox-esr:firefox-esr \
	pulseaudio:pulseaudio pulseaudio-utils:paplay

system-deps:
	@missing=""; for entry in $(SYSTEM_PACKAGES); do command -v $${entry#*:} >/dev/null 2>&1 || missing="$$missing $${entry%%:*}"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
		echo "installing$$missing for the real-browser test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing \
			|| echo "warning: apt-get could not install$$missing: the real-browser test will skip (in CI: fail)"; \
	else \
		echo "note:$$missing not installed and not root: the real-browser test will skip (sudo apt-get install -y$$missing)"; \
	fi

serve: $(VENV)/.installed-serve demo-js-deps
	@echo "starting ScribeAI on :$${PORT:-3001} (Ctrl-C or SIGTERM stops it gracefully)"
	$(BIN)/scribeai serve

test: install js-deps system-deps
	$(BIN)/mypy
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) tests/js/node_modules clients/js/node_modules benchmarks/ingest/node_modules
