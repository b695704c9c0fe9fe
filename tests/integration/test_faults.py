"""Fault injection against the real stack: a SeaweedFS S3 server and a Milvus Lite server of this
module's own, killed (SIGKILL) and restarted here while ingest runs are in flight.

After every scenario the invariant is asserted (:func:`assert_invariant`): every listed object has
exactly one record and no record exists for anything else, every duplicate carries the tags of its
original and nothing else is tagged, and the decisions equal those of a clean run of the same
objects (same ids and times, its own collection and records prefix). The figures each scenario
measured are printed (``pytest -s``) and quoted in the README's reliability section.
"""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from datetime import UTC, datetime

import numpy as np
import pytest
from PIL import Image

from ndid_tasks import augment, ingest_run, services
from ndid_tasks.config import Settings
from ndid_tasks.storage import S3Store
from tests.conftest import _free_port, jpeg_bytes, make_noise_image

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------- the stack and the corpus

@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    state = tmp_path_factory.mktemp("faults")
    settings = Settings(state_dir=str(state), s3_endpoint_url=f"http://127.0.0.1:{_free_port()}",
                        weights_mode="random", ingest_batch_size=4, embed_batch_size=8, ingest_max_parallel=3,
                        s3_retries=1, s3_bucket="faults")
    services.start_s3(settings)
    access, secret = services.ensure_local_credentials(settings)
    settings = settings.replace(s3_access_key=access, s3_secret_key=secret)
    milvus_port = _free_port()
    services.start_milvus(settings, port=milvus_port)
    yield settings.replace(milvus_uri=services.milvus_server_uri(milvus_port))
    services.stop_milvus(settings)
    services.stop_s3(settings)


@pytest.fixture
def world(stack, request):
    """Its own bucket and collections per test; the corpus uploaded; the clean run's decisions."""
    n = abs(hash(request.node.name)) % 10**6
    settings = stack.replace(s3_bucket=f"faults-{n}", milvus_collection_prefix=f"f{n}")
    S3Store(settings).ensure_bucket()
    window = upload_corpus(settings)
    clean = settings.replace(milvus_collection_prefix=f"clean{n}", s3_decisions_prefix="clean/decisions/",
                             s3_staging_prefix="clean/staging/")
    ingest_run.run_all(clean, settings.s3_bucket, "images/", *window, "clean", window[1].isoformat())
    return settings, window, decisions(clean, window)


def boundary() -> datetime:
    time.sleep(1.05 - (time.time() % 1))
    return datetime.now(UTC).replace(microsecond=0)


def upload_corpus(settings: Settings) -> tuple[datetime, datetime]:
    """6 originals, 10 copies of them (one second later), 4 unrelated pictures, 2 broken objects."""
    import skimage.data

    store = S3Store(settings)
    names = ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry")
    pics = {n: Image.fromarray(getattr(skimage.data, n)()).convert("RGB") for n in names}
    rng = np.random.default_rng(7)
    start = boundary()
    for n in names:
        store.put_bytes(f"images/orig/{n}.jpg", jpeg_bytes(pics[n]))
    time.sleep(1.1)
    for i, n in enumerate(names):
        store.put_bytes(f"images/copy/{n}_q20.jpg", jpeg_bytes(pics[n], 20))
        if i < 4:
            store.put_bytes(f"images/copy/{n}_crop.jpg", jpeg_bytes(augment.crop_area(pics[n], rng, 0.5)))
    for seed in range(4):
        store.put_bytes(f"images/other/noise{seed}.jpg", jpeg_bytes(make_noise_image(100 + seed)))
    store.put_bytes("images/bad/zero.jpg", b"")
    store.put_bytes("images/bad/truncated.jpg", jpeg_bytes(pics["coffee"])[:500])
    return start, boundary()


def decisions(settings: Settings, window) -> dict[str, tuple[str, str, str]]:
    records = ingest_run.window_records(settings, settings.s3_bucket, "images/", *window)
    return {k: (r["decision"], r["original_id"], r["error_reason"]) for k, r in records.items() if r is not None}


def recorded_share(settings: Settings, window) -> str:
    records = ingest_run.window_records(settings, settings.s3_bucket, "images/", *window)
    return f"{sum(r is not None for r in records.values())}/{len(records)}"


def assert_invariant(settings: Settings, window, clean: dict[str, tuple[str, str, str]]) -> None:
    store = S3Store(settings)
    records = ingest_run.window_records(settings, settings.s3_bucket, "images/", *window)
    assert [k for k, r in records.items() if r is None] == [], "objects without a record"
    keys = [o.key for o in store.iter_objects(ingest_run.records_prefix(settings))]
    assert len(keys) == len(records), "more record objects than listed objects"
    assert decisions(settings, window) == clean, "decisions differ from the clean run"
    for object_id, r in records.items():
        tags = store.get_tags(object_id.split("/", 3)[3])
        if r["decision"] == "duplicate":
            assert tags.get("ndid-duplicate-of") == ingest_run._tag_value(r["original_id"]), object_id
        else:
            assert not any(k.startswith("ndid-") for k in tags), object_id


def kill(settings: Settings, name: str) -> None:
    """SIGKILL the server this test module started (its own process group, by PID)."""
    pid = services.milvus_status(settings).pid if name == "milvus" else services.s3_status(settings).pid
    os.killpg(pid, signal.SIGKILL)
    while services.alive(pid):
        time.sleep(0.05)


def restart(settings: Settings, name: str) -> None:
    if name == "milvus":
        from urllib.parse import urlparse

        services.start_milvus(settings, port=urlparse(settings.milvus_uri).port)
    else:
        services.start_s3(settings)


def run_at(window) -> str:
    return window[1].isoformat()


# ---------------------------------------------------------------- the scenarios

def test_s3_killed_mid_decide_then_a_new_run_over_the_window(world, monkeypatch):
    settings, window, clean = world
    real = ingest_run.write_records
    calls = []

    def write_then_die(s, records):
        real(s, records)
        calls.append(len(records))
        if len(calls) == 1:
            kill(settings, "s3")

    monkeypatch.setattr(ingest_run, "write_records", write_then_die)
    with pytest.raises(Exception):  # noqa: B017 - whatever boto raises for a dead server
        ingest_run.run_all(settings, settings.s3_bucket, "images/", *window, "run-1", run_at(window))
    restart(settings, "s3")
    after_failure = recorded_share(settings, window)
    monkeypatch.setattr(ingest_run, "write_records", real)
    summary = ingest_run.run_all(settings, settings.s3_bucket, "images/", *window, "run-2", run_at(window))
    assert summary["skipped_already_decided"] == calls[0]  # exactly what the dead run finished
    assert_invariant(settings, window, clean)
    print(f"\nS3 killed after the first batch's records: {after_failure} recorded; "
          f"new run: {summary['objects']} more, {summary['skipped_already_decided']} skipped")


def test_milvus_killed_mid_index_then_the_same_run_is_cleared_and_resumes(world, monkeypatch):
    settings, window, clean = world
    real = ingest_run.Engine.index_prepared
    calls = []

    def index_then_die(engine, prepared, run_id, now_ms=None):
        real(engine, prepared, run_id, now_ms)
        calls.append(1)
        if len(calls) == 2:
            kill(settings, "milvus")

    monkeypatch.setattr(ingest_run.Engine, "index_prepared", index_then_die)
    with pytest.raises(Exception):  # noqa: B017 - pymilvus' MilvusException
        ingest_run.run_all(settings, settings.s3_bucket, "images/", *window, "run-1", run_at(window))
    time.sleep(2)  # down for longer than any retry of that task
    restart(settings, "milvus")
    assert recorded_share(settings, window).startswith("0/")  # nothing decided before all is indexed
    monkeypatch.setattr(ingest_run.Engine, "index_prepared", real)
    store = S3Store(settings)
    staged = sum(1 for _ in store.iter_objects(ingest_run.staging_root(settings, "run-1") + "embedded/"))
    summary = ingest_run.run_all(settings, settings.s3_bucket, "images/", *window, "run-1", run_at(window))
    assert staged == summary["batches"]  # every batch was embedded once, before the failure; kept
    assert_invariant(settings, window, clean)


def test_dead_before_tagging_is_tagged_by_the_next_run(world, monkeypatch):
    """Decisions stored in Milvus, tags not yet written: the object is not done, the next run tags it."""
    settings, window, clean = world

    def die(*args, **kwargs):
        raise ConnectionError("worker lost before tagging")

    monkeypatch.setattr(ingest_run, "tag_duplicates", die)
    with pytest.raises(ConnectionError):
        ingest_run.run_all(settings, settings.s3_bucket, "images/", *window, "run-1", run_at(window))
    monkeypatch.undo()
    assert recorded_share(settings, window).startswith("0/")
    ingest_run.run_all(settings, settings.s3_bucket, "images/", *window, "run-2", run_at(window))
    assert_invariant(settings, window, clean)


def test_a_retried_decide_task_resumes_after_its_last_recorded_batch(world, monkeypatch):
    settings, window, clean = world
    outline = ingest_run.plan(settings, settings.s3_bucket, "images/", *window, 4, False, "run-1")
    with ingest_run.Engine(settings) as engine:
        for part in outline["slices"]:
            ingest_run.embed(engine, part, "run-1", run_at(window))
            ingest_run.index(engine, part, "run-1")
        real = engine.decide
        calls = []
        fail_at = [2]

        def decide_or_fail(*args, **kwargs):
            calls.append(1)
            if len(calls) == fail_at[0]:
                raise ConnectionError("task killed")
            return real(*args, **kwargs)

        monkeypatch.setattr(engine, "decide", decide_or_fail)
        with pytest.raises(ConnectionError):
            ingest_run.decide(engine, outline["slices"][0], "run-1", run_at(window))
        fail_at[0] = -1
        before = len(calls)
        parts = [ingest_run.decide(engine, p, "run-1", run_at(window)) for p in outline["slices"]]
    # the retry decides every batch once, except the one recorded before the failure
    assert len(calls) - before == outline["batches"] - 1
    ingest_run.write_summary(settings, outline, parts, "2026-01-01", 1.0, True)
    assert_invariant(settings, window, clean)


def test_overlapping_runs_over_the_same_window(world):
    """Two runs over one window at the same time (e.g. a manual run beside the scheduled one)."""
    settings, window, clean = world
    errors = []

    def one(run_id):
        try:
            ingest_run.run_all(settings, settings.s3_bucket, "images/", *window, run_id, run_at(window))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(f"run-{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [f"{type(e).__name__}: {e}" for e in errors] == []
    assert_invariant(settings, window, clean)


def test_a_poisoned_batch_gives_typed_records_and_the_rest_is_decided(world):
    """Objects that used to fail their whole batch (forever): a key longer than an index id, a
    decompression bomb, a huge 16-bit PNG, keys with quotes, backslashes and newlines."""
    settings, _window, _clean = world
    store = S3Store(settings)
    start = boundary()
    # 1022 bytes (S3 allows 1024; SeaweedFS 255 a path segment); the id adds s3://bucket/
    long_key = "images/poison/" + "/".join(["k" * 200] * 5) + ".jpg"
    store.put_bytes(long_key, jpeg_bytes(make_noise_image(1)))
    bomb = io.BytesIO()
    Image.new("L", (12000, 12000)).save(bomb, "PNG")
    store.put_bytes("images/poison/bomb.png", bomb.getvalue())
    deep = io.BytesIO()
    Image.fromarray(np.tile(np.arange(8900, dtype=np.uint16), (8900, 1))).save(deep, "PNG")
    store.put_bytes("images/poison/deep16.png", deep.getvalue())
    # (SeaweedFS stores a backslash as a path separator: a Milvus filter with one is tested in test_index)
    odd = ['images/poison/quote".jpg', "images/poison/new\nline.jpg", "images/poison/ünïcødé 空白.jpg"]
    for i, key in enumerate(odd):
        store.put_bytes(key, jpeg_bytes(make_noise_image(200 + i)))
    end = boundary()
    summary = ingest_run.run_all(settings, settings.s3_bucket, "images/", start, end, "poison", end.isoformat())
    records = ingest_run.window_records(settings, settings.s3_bucket, "images/", start, end)
    by_key = {k.split("/images/poison/")[1][:20]: r for k, r in records.items()}
    assert all(r is not None for r in records.values()) and summary["objects"] == len(records) == 6
    assert by_key["k" * 20]["error_reason"] == "key_too_long"
    assert by_key["bomb.png"]["error_reason"] == "decompression_bomb"
    assert by_key["deep16.png"]["error_reason"] == "too_large"  # 8900x8900 16-bit: over the decode budget (was 1.8 GB RSS)
    assert all(by_key[k.split("images/poison/")[1][:20]]["decision"] == "unique" for k in odd)
