# The verbs a newcomer looks for. `make run` and `make test` install what they need first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed
GEN    := gen/.stamp
PROTOS := $(shell find protos -name '*.proto')

.PHONY: help install protos run test test-faults lint fmt migrate clean docs

# `make help` lists every target that has a `## what it does` comment on its line.
help: ## this list
	@awk -F ':.*## ' '/^[a-zA-Z_-]+:.*## / {printf "make %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(STAMP) $(GEN) node_modules/.installed ## venv with the dev tools, generated code, node tools

node_modules/.installed: package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@# generated code lives in gen/; make it importable from the venv
	$(PY) -c 'import site, pathlib; pathlib.Path(site.getsitepackages()[0], "school_gen.pth").write_text(str(pathlib.Path("gen").resolve()) + "\n")'
	touch $(STAMP)

protos: $(STAMP) ## regenerate Python code from protos/
	$(PY) scripts/gen_protos.py
	touch $(GEN)

$(GEN): $(STAMP) $(PROTOS) scripts/gen_protos.py
	$(PY) scripts/gen_protos.py
	touch $(GEN)

run: install ## serve both services on the embedded PostgreSQL (var/postgres), or DATABASE_URL
	$(PY) scripts/run_local.py

migrate: install ## migrate both services (DATABASE_URL, else the embedded PostgreSQL)
	$(PY) -m progress_service migrate
	$(PY) -m academic_years_service migrate

test: install ## the whole suite, on an embedded PostgreSQL (or TEST_DATABASE_URL's server)
	$(PY) -m pytest $(PYTEST_ARGS)

test-faults: install ## the long fault tests (private PostgreSQL restarts)
	$(PY) -m pytest -m faults $(PYTEST_ARGS)

lint: install ## ruff + ruff format --check + mypy + buf lint + buf breaking against main
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(PY) scripts/buf_check.py

docs: $(STAMP) ## regenerate README's configuration table from common/config.py
	$(PY) scripts/gen_docs.py

fmt: install ## ruff format, then ruff check --fix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean: ## remove the venv, generated code and caches
	rm -rf $(VENV) gen var .pytest_cache .mypy_cache .ruff_cache

# CSV import/export of 1M academic years through the service vs psql \copy, on a fresh
# PostgreSQL database (BENCH_DATABASE_URL, default the local server). Not part of `make test`.
# BENCH_ARGS="--rows 200000" for a quick run; "--flat-memory" adds a 2x run for the RSS check;
# "--rounds 1" imports once instead of twice (taking turns with psql to go first).
.PHONY: bench-csv
bench-csv: install ## CSV import/export through the service vs psql \copy (BENCH_ARGS)
	$(PY) -m bench csv $(BENCH_ARGS)

.PHONY: bench
# Services against the bare asyncpg baseline on PostgreSQL (BENCH_DATABASE_URL, TEST_DATABASE_URL
# or the local default); prints a table and writes bench/out/results.json. BENCH_ARGS=--quick.
bench: install ## both services vs a bare asyncpg baseline (BENCH_ARGS=--quick)
	$(PY) -m bench rpc $(BENCH_ARGS)
