"""Airflow glue shared by the NDID DAGs: Settings from env + Airflow Connections, the run context.

Not a DAG file (listed in .airflowignore). Nothing here touches the network at import time.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from ndid_tasks.config import Settings, load_env_file, with_connections
from ndid_tasks.errors import is_permanent

log = logging.getLogger(__name__)

S3_CONN_ID = "ndid_s3"
MILVUS_CONN_ID = "ndid_milvus"
MILVUS_POOL = "ndid_milvus"
OWNER = "ndid"

# what every NDID DAG shares: windows one after another (an image is compared with every earlier
# one, so a window must be indexed before a later window decides), no catch-up storms after a pause
DAG_DEFAULTS: dict[str, Any] = {"start_date": datetime(2026, 1, 1), "catchup": False, "max_active_runs": 1}

F = TypeVar("F", bound=Callable[..., Any])


def task_defaults(settings: Settings) -> dict[str, Any]:
    """default_args: owner, retries with exponential backoff for transient S3/Milvus errors (permanent
    ones fail at once, see :func:`fail_fast`), a timeout."""
    return {"owner": OWNER, "retries": settings.task_retries,
            "retry_delay": timedelta(seconds=settings.task_retry_delay_s),
            "retry_exponential_backoff": True, "max_retry_delay": timedelta(minutes=5),
            "execution_timeout": timedelta(hours=2)}


def fail_fast(func: F) -> F:
    """Failures no retry can fix (settings, weights, calibration, whitening: ndid_tasks.errors)
    fail the task at once with their message; everything else keeps its retries."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            if is_permanent(exc):
                from airflow.sdk.exceptions import AirflowFailException

                raise AirflowFailException(f"{type(exc).__name__}: {exc} (not retried: a retry cannot fix this)") from exc
            raise

    return wrapper  # type: ignore[return-value]


def base_settings() -> Settings:
    """Settings from NDID_* (and the local services' env file); safe at DAG parse time."""
    import os

    load_env_file(os.environ.get("NDID_STATE_DIR", "var"))
    return Settings.from_env()


__all__ = ["with_connections"]  # Connection -> Settings mapping: one place, ndid_tasks.config


def task_settings() -> Settings:
    """Settings for a running task: NDID_* overlaid by the ndid_s3 / ndid_milvus Connections."""
    from airflow.sdk import Connection

    return with_connections(base_settings(), _connection(Connection, S3_CONN_ID),
                            _connection(Connection, MILVUS_CONN_ID))


def _connection(connection_cls, conn_id: str):
    try:
        return connection_cls.get(conn_id)
    except Exception:  # noqa: BLE001 - a missing Connection means "use NDID_* variables"
        return None


def parse_time(value: Any) -> datetime | None:
    if value in (None, "", "null"):
        return None
    if isinstance(value, datetime):
        dt = value
    else:
        dt = datetime.fromisoformat(str(value))  # Python 3.11 reads a trailing Z
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def run_window(context: dict[str, Any]) -> tuple[datetime | None, datetime | None]:
    """The params' explicit time range if given, else the run's data interval."""
    params = context["params"]
    start = parse_time(params.get("start")) or context.get("data_interval_start")
    end = parse_time(params.get("end")) or context.get("data_interval_end")
    return start, end


def partition_date(context: dict[str, Any]) -> str:
    start, _ = run_window(context)
    moment = start or context.get("logical_date") or datetime.now(UTC)
    return moment.strftime("%Y-%m-%d")


def run_at(context: dict[str, Any]) -> str:
    """The run's logical time: records carry it instead of wall-clock time (identical re-runs)."""
    moment = context.get("logical_date") or context.get("data_interval_end") or context["dag_run"].run_after
    return moment.isoformat()


def worker_hostname() -> str:
    """Airflow's ``[core] hostname_callable`` for NDID workers: NDID_WORKER_NAME where several workers
    share a host (the local distributed stack), else the fully qualified host name."""
    import os
    import socket

    return os.environ.get("NDID_WORKER_NAME") or socket.getfqdn()
