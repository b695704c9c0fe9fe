"""Airflow plugin: an "NDID records" button on ndid_ingest's summarize task.

It opens the decision records in the S3 browser of the endpoint (the AWS console, or the endpoint's
own console); the prefix comes from the summarize task's XCom. The local SeaweedFS server has no
browser open to anyone (its filer UI is closed, see ndid_tasks.services): no button there.
"""

from __future__ import annotations

from typing import ClassVar
from urllib.parse import quote, urlparse

from airflow.plugins_manager import AirflowPlugin
from airflow.providers.common.compat.sdk import BaseOperatorLink, XCom


def browse_url(endpoint_url: str, records_prefix: str) -> str:
    """Where a person can look at ``s3://bucket/prefix`` for this S3 endpoint."""
    bucket, _, prefix = records_prefix.removeprefix("s3://").partition("/")
    if not endpoint_url:
        return f"https://s3.console.aws.amazon.com/s3/buckets/{bucket}?prefix={quote(prefix)}"
    parsed = urlparse(endpoint_url)
    if parsed.hostname in ("127.0.0.1", "localhost"):
        return ""
    return f"{endpoint_url.rstrip('/')}/{bucket}?prefix={quote(prefix)}"


class NdidRecordsLink(BaseOperatorLink):
    name = "NDID records"

    def get_link(self, operator, *, ti_key) -> str:
        if ti_key.dag_id != "ndid_ingest" or operator.task_id != "summarize":
            return ""
        summary = XCom.get_value(ti_key=ti_key, key="return_value") or {}
        if not summary.get("records_prefix"):
            return ""
        from ndid_tasks.config import Settings

        return browse_url(Settings.from_env().s3_endpoint_url, summary["records_prefix"])


class NdidPlugin(AirflowPlugin):
    name = "ndid"
    global_operator_extra_links: ClassVar[list] = [NdidRecordsLink()]
