# Two commands for a fresh clone: `make run` (dashboard) and `make test` (whole suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SPARK_STAMP := $(VENV)/.installed-spark
MLFLOW_STAMP := $(VENV)/.installed-mlflow
PG_STAMP := $(VENV)/.installed-postgres

# One test worker per core (pytest-xdist); a free worker takes the next test. PARALLEL= runs serially. (Not
# --dist loadgroup: with it the workers sat idle half the time and the run hung after its last test, xdist 3.8.)
PARALLEL ?= -n auto --dist worksteal
# Tests keep Python's bytecode caches (__pycache__/, ignored by git) even where the environment turns them off
# (PYTHONDONTWRITEBYTECODE=1 on our machines): without them every worker, and every `python -m core` a test
# starts, compiles the sources again and pytest rewrites every test module's asserts again (14 s of CPU per
# worker to collect the suite; 6 s with them).
TEST_ENV := PYTHONDONTWRITEBYTECODE=

.PHONY: run test test-fast bench clean-data

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

# The Spark engine (issue 15) for `make test` only: `make run` (the embedded default) needs neither pyspark nor Java.
$(SPARK_STAMP): $(STAMP) requirements-spark.txt
	$(PY) -m pip install --quiet -r requirements-spark.txt
	touch $(SPARK_STAMP)

# The MLflow export (issue 26) for `make test` only, like Spark: `make run` does not need it.
$(MLFLOW_STAMP): $(STAMP) requirements-mlflow.txt
	$(PY) -m pip install --quiet -r requirements-mlflow.txt
	touch $(MLFLOW_STAMP)

# The PostgreSQL driver (issue 26, docs/postgres.md) for `make test` only: the stores default to SQLite.
$(PG_STAMP): $(STAMP) requirements-postgres.txt
	$(PY) -m pip install --quiet -r requirements-postgres.txt
	touch $(PG_STAMP)

# The first start (operator token, demo world, first model) builds in the terminal at once, beside the
# dashboard, which shows the same progress to a visitor; on a folder that is ready it does nothing.
run: $(STAMP)
	@$(PY) -m core first-start & builder=$$!; \
	trap 'kill $$builder 2>/dev/null' EXIT INT TERM; \
	$(PY) -m streamlit run dashboard/app.py

test: $(STAMP) $(SPARK_STAMP) $(MLFLOW_STAMP) $(PG_STAMP)
	$(TEST_ENV) RETRO_SCREENSHOT_DIR=test-artifacts/screenshots $(PY) -m pytest $(PARALLEL)

# The embedded default without the tests marked slow or browser (property sweeps, soak, hostile CLI, closed-loop
# runs, Chromium) and without the optional engines it does not install (the Spark and PostgreSQL runs).
test-fast: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest $(PARALLEL) -m "not slow and not browser and not spark and not postgresql"

bench: $(STAMP)
	for b in world pipeline movielens governance drift drift_speed dashboard soak first_start serving; do $(PY) benchmarks/bench_$$b.py || exit 1; done

clean-data:
	find data -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
