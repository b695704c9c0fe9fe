"""Verification features stored at ingest: a later run verifies against earlier images without
reading them again, with the same decisions (real S3, Milvus Lite)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import numpy as np
import pytest

from ndid_tasks import augment, ingest_run
from ndid_tasks.feature_store import FeatureStore
from ndid_tasks.pipeline import Engine
from ndid_tasks.storage import S3Store
from tests.conftest import jpeg_bytes

pytestmark = pytest.mark.integration


def second() -> datetime:
    time.sleep(1.05 - time.time() % 1)
    return datetime.now(UTC).replace(microsecond=0)


def test_a_later_run_verifies_against_stored_features_only(s3_settings, photos, monkeypatch, tmp_path):
    store = S3Store(s3_settings)
    names = ("astronaut", "coffee", "rocket", "chelsea")
    t0 = second()
    for n in names:
        store.put_bytes(f"images/orig/{n}.jpg", jpeg_bytes(photos[n]))
    t1 = second()
    rng = np.random.default_rng(5)
    for n in names:
        store.put_bytes(f"images/copy/{n}.jpg", jpeg_bytes(augment.crop_area(photos[n], rng, 0.4), 60))
    t2 = second()

    stored = s3_settings.replace(store_local_features=True)
    ingest_run.run_all(stored, s3_settings.s3_bucket, "images/", t0, t1, "first", t1.isoformat())
    features = FeatureStore(stored)
    kept = features.get_many([f"s3://{s3_settings.s3_bucket}/images/orig/{n}.jpg" for n in names])
    assert len(kept) == len(names) and all(len(f) > 50 for f in kept.values())

    def no_pixels(self, ids):  # every image, old and new, must come from the feature store
        raise AssertionError(f"re-read images {ids}")

    with monkeypatch.context() as m:
        m.setattr(Engine, "pictures", no_pixels)
        summary = ingest_run.run_all(stored, s3_settings.s3_bucket, "images/", t1, t2, "second", t2.isoformat())
    assert summary["stages"].get("stage2", 0) > 0  # verification did run

    plain = s3_settings.replace(store_local_features=False, milvus_uri=str(tmp_path / "plain.db"),
                                s3_decisions_prefix="plain/decisions/", s3_staging_prefix="plain/staging/")
    for start, end, run in ((t0, t1, "first"), (t1, t2, "second")):
        ingest_run.run_all(plain, s3_settings.s3_bucket, "images/", start, end, run, end.isoformat())

    def decisions(settings):
        records = ingest_run.window_records(settings, s3_settings.s3_bucket, "images/", t0, t2)
        return {k: (r["decision"], r["original_id"], round(r["probability"], 4)) for k, r in records.items()}

    assert decisions(stored) == decisions(plain)


def test_the_dag_path_looks_closer_at_a_tight_crop_re_read_from_s3(s3_settings, photos, tmp_path):
    """In the DAG's fresh-process decide, a tight crop's original is known only by its stored
    features; the closer look re-reads it from S3 at full resolution: far more inliers than with
    the closer look off, and the crop decided a duplicate of it."""
    from PIL import Image

    store = S3Store(s3_settings)
    big = photos["astronaut"].resize((1536, 1536), Image.Resampling.BICUBIC)
    t0 = second()
    store.put_bytes("images/orig/big.jpg", jpeg_bytes(big))
    store.put_bytes("images/orig/coffee.jpg", jpeg_bytes(photos["coffee"]))
    t1 = second()
    store.put_bytes("images/copy/tight.jpg", jpeg_bytes(augment.attack_tight_crop(big, np.random.default_rng(0)), 85))
    t2 = second()

    def copy_record(settings):
        for start, end, run in ((t0, t1, "first"), (t1, t2, "second")):
            ingest_run.run_all(settings, s3_settings.s3_bucket, "images/", start, end, run, end.isoformat())
        records = ingest_run.window_records(settings, s3_settings.s3_bucket, "images/", t1, t2)
        return records[f"s3://{s3_settings.s3_bucket}/images/copy/tight.jpg"]

    # (the words gates off: the crop must reach verification for a closer look to matter, and from
    # the first image on -- generic photos' words -- they judge its words candidates; tested apart)
    ungated = s3_settings.replace(visual_words_min_ratio=0.0, visual_words_band_ratio=0.0)
    closer = copy_record(ungated.replace(store_local_features=True))
    off = copy_record(ungated.replace(store_local_features=True, closer_look_side=0,
                                          milvus_uri=str(tmp_path / "off.db"), s3_decisions_prefix="off/decisions/",
                                          s3_staging_prefix="off/staging/"))
    assert closer["decision"] == "duplicate" and closer["original_id"].endswith("images/orig/big.jpg")
    assert off["stage"] == closer["stage"] == "stage2"
    assert closer["features"]["log_inliers"] > off["features"]["log_inliers"] + np.log(2)
