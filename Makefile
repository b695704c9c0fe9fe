# NDID developer entry points. The README's two set-up commands are `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.ndid-installed
export NDID_STATE_DIR ?= var
export PYTHONWARNINGS ?= ignore::DeprecationWarning

.PHONY: install demo test test-unit services-up services-down airflow-ui airflow-down bench lint clean

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

## the whole suite: unit (no servers) + integration (real SeaweedFS S3, Milvus Lite, Airflow)
test: install
	$(BIN)/python -m pytest -q -ra tests

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

lint: install
	$(BIN)/ruff check ndid_tasks dags plugins tests scripts

clean:
	-$(BIN)/ndid services down
	rm -rf var bench_out
