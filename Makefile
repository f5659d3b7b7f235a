# Orchard: `make demo` runs the whole pipeline locally; `make test` runs the test suite.
# Both set up what they need first (a virtualenv from PyPI, and Java 17 for Spark).

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(CURDIR)/$(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
JVM_ARCHIVE := $(VENV)/orchard-spark-classes.jsa
LOCAL_SPARK_HOME := $(VENV)/orchard-spark-home
SOURCE ?=
PYTEST_ARGS ?=

# Local settings (ORCHARD_*, connections) from .env when present; see .env.example.
ifneq (,$(wildcard .env))
include .env
export $(shell sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/\1/p' .env)
endif

# The embedded default: SQLite metadata DB in .airflow/, Spark in local mode, a lake folder.
export AIRFLOW_HOME := $(CURDIR)/.airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__UNIT_TEST_MODE := False
export AIRFLOW_CONN_ORCHARD_SPARK ?= {"conn_type": "spark", "host": "local[2,3]"}
export ORCHARD_LAKE ?= $(CURDIR)/lake
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: demo test bench bench-scale e2e chromium test-spark35 lint venv java shellcheck lock clean up down logs \
  stack-test docker-engine ui

demo: venv java $(JVM_ARCHIVE)
	$(PY) -m orchard.samples data/sample --per-class 8
	airflow db migrate > $(AIRFLOW_HOME)/db-migrate.log 2>&1 || { cat $(AIRFLOW_HOME)/db-migrate.log; exit 1; }
	$(PY) -m orchard.dev.demo $(if $(SOURCE),--source "$(SOURCE)")

# Benchmarks (not part of `make test`): ratios measured side by side, printed as a table.
# BENCH_ARGS="--json bench/last.json" keeps every figure.
BENCH_ARGS ?=
bench: venv java $(JVM_ARCHIVE)
	$(PY) bench/run.py $(BENCH_ARGS)

# The real featurize and PCA steps at 2,000, 8,000 (three runs each) and 100,000 generated images
# (~15-25 min, ~1 GB of disk).
SCALE_IMAGES ?= 100000
bench-scale: venv java $(JVM_ARCHIVE)
	$(PY) bench/run.py --scale $(SCALE_IMAGES) $(BENCH_ARGS)

test: venv java shellcheck lint
	$(PY) -m pytest $(PYTEST_ARGS)

# The Spark jobs' tests again on the Spark line of EMR 7.x (pyspark 3.5), with the cluster nodes'
# pinned requirements: code that only runs on the local pyspark would fail on EMR.
SPARK35_VENV := .venv-spark35
SPARK35_STAMP := $(SPARK35_VENV)/.installed-stamp
# Test-only packages beside the node requirements: the references (Keras, scikit-learn) and the
# ONNX conversion the tests make of their seeded weights; the jobs themselves never import them.
SPARK35_TEST_DEPS := "pytest==9.2.0" "scikit-learn==1.9.1" "tensorflow-cpu==2.21.0" "keras==3.15.1" \
  "tf2onnx==1.17.0" "onnx==1.23.2" "boto3==1.43.117"
# The Apache release under EMR's own Spark build: emr-7.11.0 to 7.13.0 ship 3.5.6-amzn-0/1/2 (EMR
# Release Guide, "Spark release history", /emr/latest/ReleaseGuide/Spark-release-history.html).
# The emr-7.14.0 row (ORCHARD_EMR_RELEASE's default) could not be read from the stored docs here:
# check it there and move this pin with it. The nodes pin NumPy 2 while pyspark 3.5 declares
# numpy<2 for its ml/pandas extras; tests/spark_jobs/test_node_environment.py proves the jobs run so.
EMR_PYSPARK := 3.5.6

test-spark35: $(SPARK35_STAMP) java
	$(SPARK35_VENV)/bin/python -c "import pyspark; assert pyspark.__version__ == '$(EMR_PYSPARK)', pyspark.__version__"
	PYTHONPATH=$(CURDIR)/plugins:$(CURDIR)/spark_jobs PYSPARK_PYTHON=$(CURDIR)/$(SPARK35_VENV)/bin/python \
	  $(SPARK35_VENV)/bin/python -m pytest -p no:cacheprovider tests/spark_jobs $(PYTEST_ARGS)

$(SPARK35_STAMP): bootstrap/requirements.txt Makefile
	$(PYTHON) -m venv $(SPARK35_VENV)
	$(SPARK35_VENV)/bin/python -m pip install --quiet --upgrade "pip==26.3"
	$(SPARK35_VENV)/bin/python -m pip install --quiet -r bootstrap/requirements.txt \
	  "pyspark==$(EMR_PYSPARK)" $(SPARK35_TEST_DEPS)
	@touch $@

lint: venv
	$(VENV)/bin/ruff check dags plugins spark_jobs tests bench
	$(VENV)/bin/ruff format --check dags plugins spark_jobs tests bench
	$(VENV)/bin/mypy  # plugins/ and spark_jobs/, as [tool.mypy] in pyproject.toml says

venv: $(STAMP) $(LOCAL_SPARK_HOME)

# The local steps' Spark home (orchard.spark.home): links to pyspark's bin and jars, made again with
# every new install, so their Python processes import the installed pyspark, not its zipped sources.
$(LOCAL_SPARK_HOME): $(STAMP)
	$(PY) -m orchard.spark.home

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "Python 3.11 is required ($(PYTHON) not found); set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade "pip==26.3"
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	@mkdir -p $(AIRFLOW_HOME)
	@touch $@

# The local steps' JVM class archive (orchard.dev.jvm_archive): one real run of both steps, ~1 min, once
# per virtualenv; the steps start ~2 s faster each with it, and run without it when it is missing.
$(JVM_ARCHIVE): $(STAMP) $(LOCAL_SPARK_HOME)
	@$(MAKE) --no-print-directory java
	$(PY) -m orchard.dev.jvm_archive --force

# Spark 4 needs a Java 17+ runtime. Installed from Debian/Ubuntu packages when we are root.
java:
	@if ! java -version >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing Java 17 (openjdk-17-jre-headless) for Spark"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q openjdk-17-jre-headless; \
	  else \
	    echo "Java 17 is required by Spark: install it (Debian/Ubuntu: sudo apt-get install openjdk-17-jre-headless)"; \
	    exit 1; \
	  fi; \
	fi
	@java -version 2>&1 | head -1 | grep -Eq 'version "(1[7-9]|2[0-9])' || { echo "Spark 4 needs Java 17 or newer; found: $$(java -version 2>&1 | head -1)"; exit 1; }

# Airflow's UI without Docker: its four services on the embedded default (SQLite in .airflow/, the
# lake folder, local Spark); prints the URL and a login made for this start; Ctrl-C stops them all.
# UI_PORT picks the port (8080, or a free one when it is taken). The browser test (make e2e) runs this target.
ui: venv java
	$(PY) -m orchard.dev.ui

# A user's session in a real browser: Airflow's four services on SQLite, Playwright driving Debian's
# Chromium. Screenshots (trigger form, the run, its report tab) go to tests/browser/screenshots/.
e2e: venv java chromium
	$(PY) -m pytest -m browser tests/browser $(PYTEST_ARGS)

chromium:
	@[ -x /usr/bin/chromium ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing Debian's chromium for the browser test"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else echo "Chromium is required by make e2e (Debian/Ubuntu: sudo apt-get install chromium)"; exit 1; fi; }

# The tests lint the EMR bootstrap script with shellcheck (Debian package); skipped when absent.
shellcheck:
	@command -v shellcheck >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q shellcheck >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q shellcheck; }; \
	  else echo "shellcheck not found: its test will be skipped (Debian/Ubuntu: apt-get install shellcheck)"; fi; }

# The docker-compose stack (Airflow + Postgres + SeaweedFS + Spark local mode); needs Docker with
# Compose v2 (docs/local-stack.md). The first `make up` generates the stack's secrets into .env.
COMPOSE ?= docker compose
up:
	@python3 docker/stack_env.py .env
	$(COMPOSE) up --build --detach
	@port=$$(sed -n 's/^AIRFLOW_PORT=//p' .env); s3=$$(sed -n 's/^ORCHARD_S3_PORT=//p' .env); \
	  echo "Airflow UI: http://localhost:$${port:-8080} (admin / AIRFLOW_ADMIN_PASSWORD in .env); S3 store: http://localhost:$${s3:-8333} (ORCHARD_S3_ACCESS_KEY / ORCHARD_S3_SECRET_KEY in .env)"

down:
	$(COMPOSE) down

logs:
	$(COMPOSE) logs --follow --tail=200

# The same stack started for real, as CI does (tests/stack): a Docker engine started and stopped here,
# images built from a Debian base made with debootstrap (no registry needed), the DAG triggered
# through the REST API, its outputs checked, everything brought down. ~7 min cold, ~3.5 min warm (2 cores).
stack-test: venv docker-engine chromium
	$(PY) -m pytest -p no:cacheprovider -m stack -s tests/stack $(PYTEST_ARGS)

# Docker's engine, Compose (Debian's 1.29) and debootstrap, installed with apt when root and missing.
docker-engine:
	@for tool in dockerd docker-compose debootstrap iptables; do \
	  command -v $$tool >/dev/null 2>&1 || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing docker.io, docker-compose, debootstrap and iptables for the stack test"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	      docker.io docker-compose debootstrap iptables; \
	  else echo "make stack-test needs Docker's engine, docker-compose and debootstrap (Debian: apt-get install docker.io docker-compose debootstrap)"; exit 1; fi; \
	fi

# Re-resolve the full dependency tree from pyproject.toml's pins into constraints.txt.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade "pip==26.3"
	# soupsieve 3.x needs Python >= 3.11.5; the project supports every 3.11 (tests/test_environment.py).
	.lock-venv/bin/python -m pip install --quiet -e ".[dev]" "soupsieve<3"
	.lock-venv/bin/python -m pip freeze --exclude-editable > constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) $(SPARK35_VENV) .airflow lake data/sample .pytest_cache .ruff_cache .mypy_cache
