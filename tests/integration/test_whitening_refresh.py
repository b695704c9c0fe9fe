"""Whitening refresh against real SeaweedFS + Milvus Lite: fit on the index, re-index, switch atomically."""

import os
import time

import numpy as np
import pytest

from ndid_tasks import augment
from ndid_tasks.calibration_store import CalibrationStore
from ndid_tasks.pipeline import Engine, local_items
from ndid_tasks.refresh import refresh_due, refresh_whitening
from tests.conftest import jpeg_bytes, make_noise_image

pytestmark = pytest.mark.integration

FIELDS = ["decision", "matched_id", "original_id", "run_id", "ingested_at", "sha256", "created_at"]


def test_refresh_reindexes_keeps_decisions_and_switches(s3_settings, photos, tmp_path):
    settings = s3_settings.replace(whitening_min_images=5)
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    t = time.time() - 10_000
    names = list(photos)[:8]
    for n, name in enumerate(names):
        (folder / f"{name}.jpg").write_bytes(jpeg_bytes(photos[name]))
        (folder / f"{name}_copy.jpg").write_bytes(jpeg_bytes(augment.attack_jpeg(photos[name], rng)))
        os.utime(folder / f"{name}.jpg", (t + n, t + n))
        os.utime(folder / f"{name}_copy.jpg", (t + 100 + n, t + 100 + n))
    for k in range(24):  # more distinct corpus: a refresh needs >= 30 unique images
        (folder / f"noise_{k}.jpg").write_bytes(jpeg_bytes(make_noise_image(100 + k)))
        os.utime(folder / f"noise_{k}.jpg", (t + 50 + k, t + 50 + k))
    (folder / "broken.jpg").write_bytes(b"not an image")
    items = local_items([folder])

    engine = Engine(settings)
    engine.ingest(items, run_id="before", run_at="t0")
    old = engine.index.images
    before = engine.index.get_rows([i.id for i in items], FIELDS)
    due, why = refresh_due(engine)
    assert due and "not fitted on this index" in why

    result = refresh_whitening(engine, sample_images=40, copies=2)
    engine.close()
    assert result["status"] == "activated", result
    assert result["collection"] != old and result["previous_collection"] == old
    # the broken object has its record only, no index row
    assert result["reindex"] == {"rows": len(items) - 1, "rewhitened": len(items) - 1, "errors": 0, "missing_raw": 0}

    # a fresh process reads the new active calibration -> its whitening -> the new collection
    fresh = Engine(settings)
    try:
        active = CalibrationStore(settings).active()
        assert active.version == result["calibration"] and active.whitening_version == result["whitening"]
        assert fresh.resnet.whitening.version == result["whitening"]
        assert fresh.resnet.whitening.fitted_on["source"] == "index"
        assert fresh.index.images == result["collection"]
        after = fresh.index.get_rows([i.id for i in items], FIELDS)
        assert after == before  # every row and every decision came along unchanged
        vec = fresh.index.get_rows([items[0].id], ["resnet"])[items[0].id]["resnet"]
        # at most NDID_WHITENING_DIM axes; a tiny index has fewer descriptors than that
        assert len(vec) == fresh.resnet.dim == fresh.resnet.whitening.dim <= settings.whitening_dim
        assert fresh.index.client.describe_alias(settings.images_alias)["collection_name"] == result["collection"]
        assert old in fresh.index.client.list_collections()  # kept for rollback
        assert not refresh_due(fresh)[0]

        # ingesting the same objects again adds nothing and still finds the copies
        records = fresh.ingest(items, run_id="after", run_at="t1")
        assert fresh.index.count() == len(items) - 1  # the broken object has no row
        dup = {os.path.basename(r.id): r for r in records if r.decision == "duplicate"}
        found = [n for n in names if dup.get(f"{n}_copy.jpg") and dup[f"{n}_copy.jpg"].original_id.endswith(f"/{n}.jpg")]
        print(f"after the refresh: {len(found)}/{len(names)} copies named with their original")
        assert len(found) >= len(names) - 2
    finally:
        fresh.close()


def test_refresh_skips_a_tiny_index(random_settings, photos, tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(photos["coffee"]))
    engine = Engine(random_settings)
    try:
        engine.ingest(local_items([tmp_path / "a.jpg"]), run_id="r", run_at="t")
        assert not refresh_due(engine)[0]
        result = refresh_whitening(engine, sample_images=150, activate=False)
        assert result["status"] == "skipped" and "at least 30" in result["reason"] and engine.index.count() == 1
    finally:
        engine.close()
