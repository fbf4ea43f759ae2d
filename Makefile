# The two commands a newcomer needs: `make run` and `make test`.
# Both create .venv and install what they need; `make test` also installs the system packages the
# tests drive for real (redis-server, prometheus/promtool, espeak-ng, sox) when it runs as root.

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYSTEM_PACKAGES := redis-server prometheus espeak-ng sox openssl
SYSTEM_COMMANDS := redis-server prometheus promtool espeak-ng sox openssl
PYTEST_ARGS ?=

.PHONY: run test lint types unit sysdeps bench clean sim

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q --upgrade pip
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev]'
	touch $(STAMP)

sysdeps:
	@missing=""; for c in $(SYSTEM_COMMANDS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing system packages for:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; \
	  else \
	    echo "The tests need these commands:$$missing"; \
	    echo "Install the Debian packages: $(SYSTEM_PACKAGES) (e.g. sudo apt-get install $(SYSTEM_PACKAGES))"; \
	    exit 1; \
	  fi; \
	fi

run: $(STAMP)
	$(BIN)/relay serve

sim: $(STAMP)
	$(BIN)/relay sim --listen 127.0.0.1:8090

lint: $(STAMP)
	$(BIN)/ruff check relay tests bench
	$(BIN)/ruff format --check relay tests bench

types: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) sysdeps lint types
	$(BIN)/pytest $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/pytest tests -m "not functional" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench.load --sessions 100 --seconds 20

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
