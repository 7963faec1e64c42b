# The two commands of the README are `make demo` and `make test`; both create
# .venv when it is missing and install the package with its dependencies.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-quick clean test-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/securecloud demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

# Servers the tests start themselves (on free ports) and the browser that renders the
# demo report: installed from Debian when missing.
test-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v rclone >/dev/null || missing="$$missing rclone"; \
	command -v nats-server >/dev/null || test -x /usr/sbin/nats-server || missing="$$missing nats-server"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v haproxy >/dev/null || test -x /usr/sbin/haproxy || missing="$$missing haproxy"; \
	command -v psql >/dev/null || missing="$$missing postgresql-client"; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing (tests run real servers and clients: Redis, NATS, HAProxy, psql, Chromium, rclone)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# pytest's exit code is passed through unchanged: 5 (no tests collected) fails the run.
test: lint test-deps
	$(BIN)/python -m pytest -q

bench: $(STAMP) test-deps
	$(BIN)/python bench/cas.py --out bench/results/cas.json
	$(BIN)/python bench/batch.py --out bench/results/batch.json

bench-quick: $(STAMP) test-deps
	$(BIN)/python bench/cas.py --quick --out bench/results/cas-quick.json
	$(BIN)/python bench/batch.py --quick --out bench/results/batch-quick.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
