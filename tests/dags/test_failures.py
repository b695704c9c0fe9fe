"""Failures in real Airflow runs (dag.test in a temporary AIRFLOW_HOME, real S3 and Milvus Lite):
what no retry can fix fails at once, what a retry can fix is retried, a failed run re-run over its
window finishes it with exactly one record per object, and a window of more than 1024 batches
(Airflow's max_map_length) runs in a bounded number of mapped tasks."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from ndid_tasks import ingest_run
from ndid_tasks.storage import S3Store
from tests.conftest import jpeg_bytes, make_noise_image
from tests.dags.conftest import ROOT
from tests.dags.test_ingest_dag import boundary, put_image, record_keys, records_of, summary_of

pytestmark = pytest.mark.integration


def fresh_dag(monkeypatch, **env):
    """The ingest DAG parsed again with these NDID_* values (retries are read at parse time)."""
    from airflow.dag_processing.dagbag import DagBag

    for k, v in env.items():
        monkeypatch.setenv(k, str(v))
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag("ndid_ingest")


def run(dag, settings, start, end, logical_date=None, **params):
    conf = {"bucket": settings.s3_bucket, "start": start.isoformat(), "end": end.isoformat(), "batch_size": 3,
            **params}
    if logical_date is None:
        return dag.test(run_conf=conf)
    return dag.test(run_conf=conf, logical_date=logical_date, run_after=logical_date)  # run id from run_after


def task_tries(dag_run) -> dict[str, tuple[str, int]]:
    return {ti.task_id: (ti.state, ti.try_number) for ti in dag_run.get_task_instances() if ti.map_index < 1}


def test_a_permanent_error_fails_at_once_and_another_window_goes_through(airflow_db, airflow_env, photos,
                                                                          monkeypatch):
    dag = fresh_dag(monkeypatch, NDID_TASK_RETRIES=3, NDID_TASK_RETRY_DELAY_S=30)
    store = S3Store(airflow_env)
    t0 = boundary()
    put_image(store, "images/a/astronaut.jpg", photos["astronaut"])
    t1 = boundary()
    with monkeypatch.context() as m:
        m.setenv("NDID_WEIGHTS_MODE", "pretrained")  # no weights in this state dir: a config problem
        failed = run(dag, airflow_env, t0, t1)
    assert failed.state == "failed"
    assert task_tries(failed)["plan"] == ("failed", 1)  # not up_for_retry: 3 retries were configured
    assert record_keys(store) == []
    ok = run(dag, airflow_env, t0, t1)  # the next run (another window or this one) is not held up
    assert ok.state == "success" and len(records_of(airflow_env, t0, t1)) == 1


def test_a_transient_error_is_retried(airflow_db, airflow_env, photos, monkeypatch):
    dag = fresh_dag(monkeypatch, NDID_TASK_RETRIES=1, NDID_TASK_RETRY_DELAY_S=1, NDID_S3_RETRIES=0)
    t0 = boundary()
    put_image(S3Store(airflow_env), "images/a/coffee.jpg", photos["coffee"])
    t1 = boundary()
    with monkeypatch.context() as m:
        m.setenv("NDID_S3_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens: S3 unreachable
        failed = run(dag, airflow_env, t0, t1)
    assert failed.state == "failed"
    assert task_tries(failed)["plan"] == ("failed", 2)  # tried, then retried once


def test_a_failed_run_cleared_and_a_new_run_over_its_window_finish_it(airflow_db, airflow_env, photos, monkeypatch):
    """decide dies after the first batch's records (before the second batch's tags): clearing the
    failed run (dag.test replaces a run of the same logical date: same run id, tasks re-run)
    resumes from its checkpoints; every object ends with exactly one record, duplicates tagged."""
    dag = fresh_dag(monkeypatch, NDID_TASK_RETRIES=0)
    store = S3Store(airflow_env)
    t0 = boundary()
    for name in ("astronaut", "coffee", "rocket"):
        put_image(store, f"images/orig/{name}.jpg", photos[name])
    time.sleep(1.1)
    for name in ("astronaut", "coffee", "rocket"):
        put_image(store, f"images/copy/{name}.jpg", photos[name], 25)
    t1 = boundary()
    real = ingest_run.tag_duplicates
    calls = []

    def tag_once_then_die(settings, records):
        calls.append(1)
        if len(calls) == 2:
            raise ConnectionError("worker lost")
        return real(settings, records)

    logical = datetime(2026, 2, 1, tzinfo=UTC)
    monkeypatch.setattr(ingest_run, "tag_duplicates", tag_once_then_die)
    failed = run(dag, airflow_env, t0, t1, logical_date=logical)
    assert failed.state == "failed"
    assert len(record_keys(store)) == 3  # the first batch (3 objects) recorded, the rest not
    monkeypatch.setattr(ingest_run, "tag_duplicates", real)
    cleared = run(dag, airflow_env, t0, t1, logical_date=logical)
    assert cleared.state == "success" and cleared.run_id == failed.run_id
    records = {r["id"].split("/images/")[1]: r for r in records_of(airflow_env, t0, t1)}
    assert len(record_keys(store)) == 6
    for name in ("astronaut", "coffee", "rocket"):
        assert records[f"copy/{name}.jpg"]["decision"] == "duplicate"
        assert store.get_tags(f"images/copy/{name}.jpg")["ndid-duplicate-of"].endswith(f"orig/{name}.jpg")
    again = run(dag, airflow_env, t0, t1)  # a new run over the window: nothing left to do
    assert again.state == "success" and summary_of(store, again.run_id)["skipped_already_decided"] == 6
    assert len(record_keys(store)) == 6


def test_a_window_of_more_than_1024_batches(airflow_db, airflow_env, monkeypatch):
    """Airflow's max_map_length is 1024: the old plan mapped one task per batch and failed here."""
    from concurrent.futures import ThreadPoolExecutor

    dag = fresh_dag(monkeypatch, NDID_TASK_RETRIES=0, NDID_INGEST_MAX_PARALLEL=4, NDID_EMBED_BATCH_SIZE=1)
    store = S3Store(airflow_env)
    objects = 1030
    tiny = [jpeg_bytes(make_noise_image(seed, size=(32, 32))) for seed in range(objects)]
    t0 = boundary()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: store.put_bytes(f"images/many/{n:05d}.jpg", tiny[n]), range(objects)))
    t1 = boundary()
    dr = run(dag, airflow_env, t0, t1, batch_size=1)
    assert dr.state == "success"
    summary = summary_of(store, dr.run_id)
    assert summary["batches"] == objects and summary["slices"] == 4 and summary["objects"] == objects
    assert len(record_keys(store)) == objects
    mapped = [ti for ti in dr.get_task_instances() if ti.task_id == "decide"]
    assert len(mapped) == 4
