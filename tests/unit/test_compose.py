"""docker-compose.yml cannot run here (no Docker engine): check its shape against the settings."""

from pathlib import Path

import pytest
import yaml

from ndid_tasks.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_and_images(compose):
    services = compose["services"]
    airflow = {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
               "airflow-worker", "airflow-init"}
    assert airflow | {"postgres", "redis", "milvus", "etcd", "milvus-minio", "s3"} <= set(services)
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")
    assert services["milvus"]["image"].startswith("milvusdb/milvus:")
    assert services["airflow-worker"]["command"] == "celery worker"
    for name in airflow:
        assert "apache/airflow:3.3" in services[name]["build"]["dockerfile_inline"]


def test_ports(compose):
    s = compose["services"]
    assert "8080:8080" in s["airflow-apiserver"]["ports"]
    assert "19530:19530" in s["milvus"]["ports"]
    assert "9000:9000" in s["s3"]["ports"]


def test_env_keys_are_real_settings_and_wired(compose):
    env = compose["services"]["airflow-worker"]["environment"]
    known = {ENV_PREFIX + name.upper() for name in Settings.__dataclass_fields__}
    ndid_keys = {k for k in env if k.startswith(ENV_PREFIX)}
    assert ndid_keys <= known, ndid_keys - known
    assert {"NDID_S3_ENDPOINT_URL", "NDID_MILVUS_URI", "NDID_S3_ACCESS_KEY", "NDID_S3_SECRET_KEY"} <= ndid_keys
    assert env["NDID_MILVUS_URI"] == "http://milvus:19530"
    assert env["NDID_S3_ENDPOINT_URL"].startswith("http://s3:")
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert "AIRFLOW_CONN_NDID_S3" in env and "AIRFLOW_CONN_NDID_MILVUS" in env


def test_no_secret_values_in_the_file(compose):
    env = compose["services"]["airflow-worker"]["environment"]
    for key in ("NDID_S3_SECRET_KEY", "NDID_S3_ACCESS_KEY", "AIRFLOW__CORE__FERNET_KEY"):
        assert str(env[key]).startswith("${"), key  # comes from .env, never from the file


def test_dags_and_plugins_are_mounted(compose):
    volumes = compose["services"]["airflow-scheduler"]["volumes"]
    assert "./dags:/opt/airflow/dags" in volumes and "./plugins:/opt/airflow/plugins" in volumes


def test_the_local_distributed_stack_is_the_same_shape(compose, tmp_path):
    """scripts/distributed.py (what `make test` runs a real DAG on) and this file agree."""
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    from distributed import WORKERS, Stack

    local = Stack(tmp_path).airflow_env()
    env = compose["services"]["airflow-worker"]["environment"]
    for key in ("AIRFLOW__CORE__EXECUTOR", "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"):
        assert str(env[key]).lower() == local[key].lower(), key
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].split(":")[0] == local["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].split(":")[0]
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].split(":")[0] == local["AIRFLOW__CELERY__RESULT_BACKEND"].split(":")[0]
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://:${REDIS_PASSWORD")  # a password, as locally
    assert local["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://:")
    assert env["NDID_MILVUS_POOL_SLOTS"].endswith(f":-{local['NDID_MILVUS_POOL_SLOTS']}}}")
    assert compose["services"]["airflow-worker"]["deploy"]["replicas"] == len(WORKERS)
    assert env["AIRFLOW__CELERY__WORKER_CONCURRENCY"].endswith(f":-{local['AIRFLOW__CELERY__WORKER_CONCURRENCY']}}}")
