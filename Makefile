# The two commands of the README are `make demo` and `make test`; both create
# .venv when it is missing and install the package with its dependencies.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-quick clean

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

# pytest's exit code is passed through unchanged: 5 (no tests collected) fails the run.
test: lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/cas.py --out bench/results/cas.json

bench-quick: $(STAMP)
	$(BIN)/python bench/cas.py --quick --out bench/results/cas-quick.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
