"""Airflow in a temporary AIRFLOW_HOME: configured before anything imports airflow."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_HOME = tempfile.mkdtemp(prefix="ndid-airflow-")
os.environ.update({
    "AIRFLOW_HOME": _HOME,
    "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_HOME}/airflow.db",
    "AIRFLOW__API_AUTH__JWT_SECRET": "ndid-tests-" + "x" * 64,
    "AIRFLOW__CORE__PARALLELISM": "2",
    "PYTHONWARNINGS": "ignore",
})
sys.path[:0] = [str(ROOT / "dags"), str(ROOT / "plugins")]


@pytest.fixture(scope="session")
def airflow_db():
    """`airflow db migrate` once per session, into the temporary home."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True,
                   env=os.environ.copy(), timeout=300)
    return _HOME


@pytest.fixture(scope="session")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


@pytest.fixture
def airflow_env(s3_settings, monkeypatch, tmp_path):
    env = {"NDID_S3_ENDPOINT_URL": s3_settings.s3_endpoint_url, "NDID_S3_ACCESS_KEY": s3_settings.s3_access_key,
           "NDID_S3_SECRET_KEY": s3_settings.s3_secret_key, "NDID_S3_BUCKET": s3_settings.s3_bucket,
           "NDID_MILVUS_URI": s3_settings.resolved_milvus_uri, "NDID_WEIGHTS_MODE": "random",
           "NDID_STATE_DIR": str(tmp_path / "state"), "NDID_EMBED_BATCH_SIZE": "8"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return s3_settings
