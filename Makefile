# NDID developer entry points. The README's two set-up commands are `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.ndid-installed
export NDID_STATE_DIR ?= var
export PYTHONWARNINGS ?= ignore::DeprecationWarning

.PHONY: install system-packages demo test test-unit test-distributed distributed-up distributed-down services-up services-down airflow-ui airflow-down bench lint clean

install: $(STAMP)

# pip (not uv/poetry): this machine's pip config serves torch/torchvision from local disk
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/python -m compileall -q -j 2 $(VENV)/lib ndid_tasks dags plugins > /dev/null || true
	touch $(STAMP)

## the main job: local services + sample images in S3 + the ndid_ingest DAG run for real
demo: install
	$(BIN)/python scripts/demo.py

# Debian packages the distributed test (PostgreSQL, Redis) and the browser test of the NDID pages
# (Chromium: Playwright's own browser download cannot work here) need, installed when missing and root.
# The PostgreSQL package is told not to create (and start) a default cluster: the tests start
# their own servers and stop them by PID.
SYSTEM_PACKAGES = redis-server postgresql chromium g++
system-packages:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	  echo "Debian packages missing:$$missing (not root: the distributed and browser tests will be skipped)"; exit 0; fi; \
	echo "installing$$missing (for the distributed, browser and compiled-encoder tests)"; \
	mkdir -p /etc/postgresql-common; \
	grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf || \
	  echo "create_main_cluster = false" >> /etc/postgresql-common/createcluster.conf; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null

## the whole suite: unit (no servers) + integration (real SeaweedFS S3, Milvus Lite, Airflow) + the
## distributed run (PostgreSQL, Redis, two Celery workers)
test: install system-packages lint
	$(BIN)/python -m pytest -q -ra tests

test-distributed: install system-packages
	$(BIN)/python -m pytest -q -ra tests/distributed

## the local distributed stack (the shape of docker-compose.yml) on 127.0.0.1, state under var/
distributed-up: install system-packages
	$(BIN)/python scripts/distributed.py up

distributed-down:
	$(BIN)/python scripts/distributed.py down

test-unit: install
	$(BIN)/python -m pytest -q tests/unit

services-up: install
	$(BIN)/ndid services up

services-down:
	$(BIN)/ndid services down

## Airflow UI on http://127.0.0.1:8080 for watching runs (not a set-up step)
airflow-ui: install
	$(BIN)/python scripts/airflow_standalone.py

## stops `make airflow-ui` (every process it started, by PID), not the S3/Milvus services
airflow-down:
	$(BIN)/python scripts/airflow_standalone.py --stop

bench: install
	$(BIN)/ndid bench make ../shared/data/originals ../shared/data/distractors bench_data
	$(BIN)/ndid bench run bench_data --out bench_out

## ruff (with bugbear and blind-except rules) over everything, mypy over the engine; `make test` runs it first
lint: install
	$(BIN)/ruff check ndid_tasks dags plugins tests scripts
	$(BIN)/mypy

clean:
	-$(BIN)/ndid services down
	rm -rf var bench_out
