"""Pure parts of the ingest run: where a record lives, how the manifest is sliced."""

from pathlib import Path

from ndid_tasks.config import Settings
from ndid_tasks.ingest_run import record_key, slice_ranges, summary_from_counts


def test_a_record_key_depends_on_the_object_alone():
    s = Settings()
    key = record_key(s, "s3://b/images/x.jpg", 1_767_225_600_000)
    assert key == record_key(s, "s3://b/images/x.jpg", 1_767_225_600_000)  # any run, any retry
    assert key.startswith("decisions/records/date=2026-01-01/hour=00/") and key.endswith(".json")
    assert key != record_key(s, "s3://b/images/x.jpg", 1_767_225_601_000)  # a new version of the object
    assert key != record_key(s, "s3://b/images/y.jpg", 1_767_225_600_000)


def test_slices_are_bounded_contiguous_and_cover_every_batch():
    for batches, most in ((0, 16), (1, 16), (5, 16), (1030, 4), (70_000, 16)):
        parts = slice_ranges(batches, most)
        assert len(parts) == min(batches, most)
        covered = [b for p in parts for b in range(p["first"], p["stop"])]
        assert covered == list(range(batches))
        sizes = {p["stop"] - p["first"] for p in parts}
        assert not sizes or max(sizes) - min(sizes) <= 1


def test_summary_adds_up_counts_from_slices():
    counts = {"objects": 10, "decision:duplicate": 3, "decision:unique": 5, "decision:error": 2,
              "error:corrupt": 2, "stage:stage2": 4, "stage:stage1": 4, "stage2_images": 4, "tagged": 3}
    out = summary_from_counts(counts, seconds=2.0)
    assert out["decisions"] == {"duplicate": 3, "error": 2, "unique": 5} and out["errors"] == {"corrupt": 2}
    assert out["stage2_share"] == 0.5 and out["images_per_s"] == 5.0 and out["tagged"] == 3


def test_objects_are_read_ahead_in_order_with_each_failure_in_its_place(random_settings, tmp_path, monkeypatch):
    """Engine.fetched reads several objects at once (they wait on the network), yields them in the
    items' order with a failed read in its own place, and never runs more than FETCH_AHEAD ahead of
    the object being decoded."""
    import threading

    from ndid_tasks import pipeline
    from ndid_tasks.pipeline import Engine, SourceItem

    items = [SourceItem(f"img{n}", str(tmp_path / f"img{n}.jpg"), n) for n in range(20)]
    for item in items:
        if item.id != "img5":  # img5 is missing: its read fails
            Path(item.source).write_bytes(item.id.encode())
    together = threading.Barrier(2, timeout=10)  # the first two reads must be in flight at once
    started, lock = [], threading.Lock()
    engine = Engine(random_settings)
    plain_read = engine.read_bytes

    def read_bytes(source):
        with lock:
            started.append(source)
            nth = len(started)
        if nth <= 2:  # (counted under the lock: exactly the first two wait for each other)
            together.wait()
        return plain_read(source)

    monkeypatch.setattr(engine, "read_bytes", read_bytes)
    seen = []
    for n, (item, data) in enumerate(engine.fetched(items)):
        assert len(started) <= n + 1 + pipeline.FETCH_AHEAD  # bounded memory: a window, not the batch
        seen.append(item.id)
        if item.id == "img5":
            assert isinstance(data, FileNotFoundError)
        else:
            assert data == item.id.encode()
    assert seen == [i.id for i in items] and sorted(started) == sorted(i.source for i in items)
    assert list(engine.fetched(items[:1])) == [(items[0], b"img0")]  # one object: read inline
