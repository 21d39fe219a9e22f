# The verbs a newcomer looks for. `make run` and `make test` install what they need first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed
GEN    := gen/.stamp
PROTOS := $(shell find protos -name '*.proto')

.PHONY: help install protos run test test-faults lint fmt migrate clean

help:
	@echo "make run      serve both services on the embedded SQLite default"
	@echo "make test     run the whole suite (PostgreSQL tests when TEST_DATABASE_URL is set)"
	@echo "make lint     ruff + mypy + buf lint + buf breaking against main"
	@echo "make protos   regenerate Python code from protos/"
	@echo "make migrate  migrate both services' databases (DATABASE_URL or the SQLite default)"

install: $(STAMP) $(GEN) node_modules/.installed

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

protos: $(STAMP)
	$(PY) scripts/gen_protos.py
	touch $(GEN)

$(GEN): $(STAMP) $(PROTOS) scripts/gen_protos.py
	$(PY) scripts/gen_protos.py
	touch $(GEN)

run: install
	$(PY) scripts/run_local.py

migrate: install
	$(PY) -m progress_service migrate
	$(PY) -m academic_years_service migrate

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-faults: install
	$(PY) -m pytest -m faults $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(PY) scripts/buf_check.py

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) gen var .pytest_cache .mypy_cache .ruff_cache

# CSV import/export of 1M academic years through the service vs psql \copy, on a fresh
# PostgreSQL database (BENCH_DATABASE_URL, default the local server). Not part of `make test`.
# BENCH_ARGS="--rows 200000" for a quick run; "--flat-memory" adds a 2x run for the RSS check;
# "--rounds 1" imports once instead of twice (taking turns with psql to go first).
.PHONY: bench-csv
bench-csv: install
	$(PY) -m bench.csv_bench $(BENCH_ARGS)

.PHONY: bench
# Services against the bare asyncpg baseline on PostgreSQL (BENCH_DATABASE_URL, TEST_DATABASE_URL
# or the local default); prints a table and writes bench/out/results.json. BENCH_ARGS=--quick.
bench: install
	$(PY) -m bench $(BENCH_ARGS)
