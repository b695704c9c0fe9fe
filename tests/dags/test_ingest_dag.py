"""ndid_ingest run for real: SeaweedFS S3, Milvus Lite, Airflow 3 (dag.test in a temp AIRFLOW_HOME)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import numpy as np
import pytest

from ndid_tasks import augment
from ndid_tasks.ingest_run import safe_run_id, window_records
from ndid_tasks.storage import S3Store
from tests.conftest import jpeg_bytes

pytestmark = pytest.mark.integration


def boundary() -> datetime:
    """A whole-second instant with nothing uploaded in its second yet (S3 LastModified has 1 s resolution)."""
    time.sleep(1.05 - (time.time() % 1))
    return datetime.now(UTC).replace(microsecond=0)


def run_ingest(dagbag, settings, start: datetime, end: datetime, **params):
    dag = dagbag.get_dag("ndid_ingest")
    conf = {"bucket": settings.s3_bucket, "start": start.isoformat(), "end": end.isoformat(), "batch_size": 3,
            **params}
    dr = dag.test(run_conf=conf)
    assert dr.state == "success", dr.state
    return dr


def summary_of(store: S3Store, run_id: str) -> dict:
    keys = [o.key for o in store.iter_objects("decisions/runs/") if o.key.endswith("_summary.json")]
    match = [k for k in keys if f"run={safe_run_id(run_id)}/" in k]
    assert len(match) == 1, (run_id, keys)
    return store.get_json(match[0])


def records_of(settings, start: datetime, end: datetime) -> list[dict]:
    """The records of a window's objects; asserts every object has exactly one."""
    records = window_records(settings, settings.s3_bucket, "images/", start, end)
    assert all(r is not None for r in records.values()), [k for k, r in records.items() if r is None]
    return list(records.values())


def record_keys(store: S3Store) -> list[str]:
    return sorted(o.key for o in store.iter_objects("decisions/records/"))


def put_image(store, key, img, quality=90):
    store.put_bytes(key, jpeg_bytes(img, quality), "image/jpeg")


def test_ingest_decides_tags_records_errors_and_a_second_run_adds_nothing(dagbag, airflow_env, photos):
    store = S3Store(airflow_env)
    t0 = boundary()
    for name in ("astronaut", "coffee", "rocket"):
        put_image(store, f"images/orig/{name}.jpg", photos[name])
    time.sleep(1.1)  # copies strictly later than originals (1 s LastModified resolution)
    rng = np.random.default_rng(0)
    put_image(store, "images/copies/astronaut_q15.jpg", photos["astronaut"], 15)
    put_image(store, "images/copies/astronaut_crop.jpg", augment.crop_area(photos["astronaut"], rng, 0.3))
    store.put_bytes("images/copies/coffee_exact.jpg", jpeg_bytes(photos["coffee"], 90))
    put_image(store, "images/other/chelsea.jpg", photos["chelsea"])
    store.put_bytes("images/other/broken.jpg", jpeg_bytes(photos["camera"])[:300])
    store.put_bytes("decisions/not-an-image-outside-prefix.txt", b"ignored")
    t1 = boundary()

    dr = run_ingest(dagbag, airflow_env, t0, t1)
    records = {r["id"].split("/images/")[1]: r for r in records_of(airflow_env, t0, t1)}
    assert len(records) == 8  # one record per object, errors included
    assert records["orig/astronaut.jpg"]["decision"] == "unique"
    assert records["other/chelsea.jpg"]["decision"] == "unique"
    for key in ("copies/astronaut_q15.jpg", "copies/astronaut_crop.jpg"):
        assert records[key]["decision"] == "duplicate", records[key]
        assert records[key]["original_id"].endswith("images/orig/astronaut.jpg")
    assert records["copies/coffee_exact.jpg"]["stage"] == "exact"
    assert records["other/broken.jpg"]["decision"] == "error"
    assert records["other/broken.jpg"]["error_reason"] in ("truncated", "corrupt")
    tags = store.get_tags("images/copies/astronaut_q15.jpg")
    assert tags["ndid-duplicate-of"].endswith("images/orig/astronaut.jpg")
    assert 0.0 < float(tags["ndid-probability"]) <= 1.0 and tags["ndid-decision-version"]
    assert store.get_tags("images/orig/astronaut.jpg") == {}
    summary = summary_of(store, dr.run_id)
    assert summary["objects"] == 8 and summary["errors"] == {records["other/broken.jpg"]["error_reason"]: 1}
    assert summary["decisions"]["duplicate"] == 3 and summary["untrained"] is True
    assert 0.0 <= summary["stage2_share"] <= 1.0 and summary["images_per_s"] > 0

    before = record_keys(store)
    assert len(before) == 8
    dr2 = run_ingest(dagbag, airflow_env, t0, t1)
    assert record_keys(store) == before  # no new records
    again = summary_of(store, dr2.run_id)
    assert again["objects"] == 0 and again["skipped_already_decided"] == 8

    dr3 = run_ingest(dagbag, airflow_env, t0, t1, reprocess=True)  # explicit reprocess: same decisions again
    assert record_keys(store) == before  # rewritten in place, never duplicated
    assert summary_of(store, dr3.run_id)["objects"] == 8
    redo = {r["id"]: (r["decision"], r["original_id"]) for r in records_of(airflow_env, t0, t1)}
    assert redo == {r["id"]: (r["decision"], r["original_id"]) for r in records.values()}


def test_backfill_processes_only_its_interval(dagbag, airflow_env, photos):
    store = S3Store(airflow_env)
    t0 = boundary()
    put_image(store, "images/a/astronaut.jpg", photos["astronaut"])
    t1 = boundary()
    put_image(store, "images/b/rocket.jpg", photos["rocket"])
    put_image(store, "images/b/coffee.jpg", photos["coffee"])
    t2 = boundary()
    later = run_ingest(dagbag, airflow_env, t1, t2)
    assert summary_of(store, later.run_id)["objects"] == 2
    assert {r["id"].rsplit("/", 2)[-2] for r in records_of(airflow_env, t1, t2)} == {"b"}
    assert len(record_keys(store)) == 2
    earlier = run_ingest(dagbag, airflow_env, t0, t1)  # the backfill of the earlier interval
    assert summary_of(store, earlier.run_id)["objects"] == 1
    ids = [r["id"] for r in records_of(airflow_env, t0, t1)]
    assert ids == [f"s3://{airflow_env.s3_bucket}/images/a/astronaut.jpg"]
