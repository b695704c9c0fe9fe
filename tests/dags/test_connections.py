"""Airflow Connections override NDID_* inside Airflow (real airflow.sdk Connection objects)."""

from airflow.sdk import Connection
from ndid_airflow import with_connections

from ndid_tasks.config import Settings


def test_s3_and_milvus_connections_override_settings():
    base = Settings(s3_access_key="env-key", s3_secret_key="env-secret")
    s3 = Connection(conn_id="ndid_s3", conn_type="aws", login="conn-key", password="conn-secret",
                    extra='{"endpoint_url": "http://s3.internal:9000", "region_name": "eu-west-1"}')
    milvus = Connection(conn_id="ndid_milvus", conn_type="generic", host="http://milvus", port=19530,
                        login="root", password="pw")
    s = with_connections(base, s3, milvus)
    assert (s.s3_access_key, s.s3_secret_key) == ("conn-key", "conn-secret")
    assert s.s3_endpoint_url == "http://s3.internal:9000" and s.s3_region == "eu-west-1"
    assert s.milvus_uri == "http://milvus:19530" and s.milvus_token == "root:pw"


def test_missing_connections_keep_environment_values():
    base = Settings(s3_access_key="env-key", milvus_uri="var/x.db")
    assert with_connections(base, None, None) == base
