"""ndid_ingest run for real: SeaweedFS S3, Milvus Lite, Airflow 3 (dag.test in a temp AIRFLOW_HOME)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import numpy as np
import pytest

from ndid_tasks import augment
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
    keys = [o.key for o in store.iter_objects("decisions/") if o.key.endswith("_summary.json")]
    safe = run_id.replace(":", "_").replace("+", "_")
    match = [k for k in keys if f"run={safe}/" in k]
    assert len(match) == 1, (run_id, keys)
    return store.get_json(match[0])


def records_of(store: S3Store, run_id: str) -> list[dict]:
    safe = run_id.replace(":", "_").replace("+", "_")
    rows = []
    for o in store.iter_objects("decisions/"):
        if f"run={safe}/" in o.key and o.key.endswith(".jsonl"):
            rows += store.get_jsonl(o.key)
    return rows


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
    records = {r["id"].split("/images/")[1]: r for r in records_of(store, dr.run_id)}
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

    before = sorted(o.key for o in store.iter_objects("decisions/") if o.key.endswith(".jsonl"))
    dr2 = run_ingest(dagbag, airflow_env, t0, t1)
    after = sorted(o.key for o in store.iter_objects("decisions/") if o.key.endswith(".jsonl"))
    assert after == before  # no new records
    again = summary_of(store, dr2.run_id)
    assert again["objects"] == 0 and again["skipped_already_decided"] == 8

    dr3 = run_ingest(dagbag, airflow_env, t0, t1, reprocess=True)  # explicit reprocess: same decisions again
    redo = {r["id"]: (r["decision"], r["original_id"]) for r in records_of(store, dr3.run_id)}
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
    assert {r["id"].rsplit("/", 2)[-2] for r in records_of(store, later.run_id)} == {"b"}
    earlier = run_ingest(dagbag, airflow_env, t0, t1)  # the backfill of the earlier interval
    ids = [r["id"] for r in records_of(store, earlier.run_id)]
    assert ids == [f"s3://{airflow_env.s3_bucket}/images/a/astronaut.jpg"]
