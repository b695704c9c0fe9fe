"""The steps of one ingestion run over S3, one function per DAG task (no Airflow here).

    plan       stream the listing of [start, end) page by page, drop objects that already have a
               record, write the rest to S3 as a manifest of batches; cut it into a bounded number
               of slices (the mapped tasks), whatever the window size
    embed      per batch of a slice: fetch + decode + pHash + ResNet -> staged NPZ  (parallel)
    index      per batch of a slice: upsert into Milvus                             (pool)
    decide     per batch of a slice: decide -> tag duplicates -> one record per object (pool)
    summarize  counts from the slices -> _summary.json

The invariant every step keeps, whatever fails: **an object is done when its record exists**, and
its record is written only after its duplicate tags. A record's key is derived from the object
alone (id and version, :func:`record_key`), so a retry, a cleared task, a re-run of a failed run or
two runs over the same window write the same key: every listed object ends with exactly one
record, and a later run finishes (and tags) whatever an earlier one left half-done. Each step
checkpoints per batch in the staging area, so a retried slice resumes where it stopped.
Decisions depend only on the index (every image is compared with earlier images only, and an
undecided earlier image is decided on demand to name the original), so neither the batch split
nor the order in which tasks run changes them.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from .config import Settings
from .decide import DecisionRecord
from .errors import PermanentError
from .pipeline import Engine, SourceItem, pack_prepared, unpack_prepared
from .storage import ObjectInfo, S3Store, parse_s3_uri

log = logging.getLogger(__name__)

RECORD_WRITERS = 8  # parallel PUTs of one batch's records


# ---------------------------------------------------------------- where things live

def safe_run_id(run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]", "_", run_id)[:200]


def run_prefix(settings: Settings, run_id: str, partition_date: str) -> str:
    """Where a run's summary lives: ``decisions/runs/date=D/run=R/``."""
    return f"{settings.s3_decisions_prefix}runs/date={partition_date}/run={safe_run_id(run_id)}/"


def records_prefix(settings: Settings) -> str:
    return f"{settings.s3_decisions_prefix}records/"


def record_key(settings: Settings, object_id: str, created_at_ms: int) -> str:
    """The one key of an object's record: partitioned by when the object appeared (so a window's
    records are listed with a few prefixes) and named by a hash of its id and version."""
    moment = datetime.fromtimestamp(created_at_ms / 1000, tz=UTC)
    digest = hashlib.sha256(f"{object_id}\n{created_at_ms}".encode()).hexdigest()[:40]
    return f"{records_prefix(settings)}{_hour_partition(moment)}{digest}.json"


def _hour_partition(moment: datetime) -> str:
    return moment.strftime("date=%Y-%m-%d/hour=%H/")


def staging_root(settings: Settings, run_id: str) -> str:
    return f"{settings.s3_staging_prefix}run={safe_run_id(run_id)}/"


def manifest_key(settings: Settings, run_id: str) -> str:
    return staging_root(settings, run_id) + "manifest.json"


def plan_key(settings: Settings, run_id: str, batch_no: int) -> str:
    return f"{staging_root(settings, run_id)}plan/batch-{batch_no:06d}.json"


def staging_key(settings: Settings, run_id: str, batch_no: int) -> str:
    return f"{staging_root(settings, run_id)}embedded/batch-{batch_no:06d}.npz"


def indexed_key(settings: Settings, run_id: str, slice_no: int) -> str:
    return f"{staging_root(settings, run_id)}indexed/slice-{slice_no:04d}.json"


def decided_key(settings: Settings, run_id: str, batch_no: int) -> str:
    return f"{staging_root(settings, run_id)}decided/batch-{batch_no:06d}.json"


# ---------------------------------------------------------------- plan

def item_of(bucket: str, obj: ObjectInfo) -> SourceItem:
    uri = f"s3://{bucket}/{obj.key}"
    return SourceItem(uri, uri, int(obj.last_modified.timestamp() * 1000), obj.size)


def recorded_keys(settings: Settings, start: datetime | None, end: datetime | None) -> Iterator[str]:
    """Keys of the records of objects that appeared in [start, end), hour partition by hour."""
    store = S3Store(settings)
    if start is None or end is None:
        yield from (o.key for o in store.iter_objects(records_prefix(settings)))
        return
    hour = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    while hour < end:
        yield from (o.key for o in store.iter_objects(records_prefix(settings) + _hour_partition(hour)))
        hour += timedelta(hours=1)


def plan(settings: Settings, bucket: str, prefix: str, start: datetime | None, end: datetime | None,
         batch_size: int, reprocess: bool, run_id: str) -> dict[str, Any]:
    """Write the run's manifest to S3 and return its outline (small enough for XCom at any size).

    The listing is streamed page by page; an object is skipped when its record exists (unless
    ``reprocess``), i.e. only finished work is skipped -- never an object with rows or tags alone.
    A run that already has a manifest (a retry, a cleared run) keeps it.
    """
    t0 = time.perf_counter()
    staging = S3Store(settings)
    if staging.exists(manifest_key(settings, run_id)):  # a retried or cleared run keeps its plan: the
        outline = staging.get_json(manifest_key(settings, run_id))  # checkpoints are keyed by its batches
        log.info("plan: run %s was planned before (%d batches); resuming it", run_id, outline["batches"])
        return outline
    done = set() if reprocess else set(recorded_keys(settings, start, end))
    listed = skipped = batches = 0
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        nonlocal batches, batch
        if batch:
            staging.put_json(plan_key(settings, run_id, batches), {"batch_no": batches, "items": batch})
            batches += 1
            batch = []

    for obj in S3Store(settings, bucket=bucket).iter_window(prefix, start, end):
        listed += 1
        item = item_of(bucket, obj)
        if record_key(settings, item.id, item.created_at_ms) in done:
            skipped += 1
            continue
        batch.append(item.to_dict())
        if len(batch) >= batch_size:
            flush()
        if listed % 10_000 == 0:
            log.info("plan: %d objects listed, %d already recorded, %d batches written", listed, skipped, batches)
    flush()
    slices = slice_ranges(batches, settings.ingest_max_parallel)
    outline = {"run_id": run_id, "bucket": bucket, "prefix": prefix, "listed": listed, "skipped": skipped,
               "batches": batches, "slices": slices, "reprocess": reprocess,
               "window": [start.isoformat() if start else None, end.isoformat() if end else None]}
    staging.put_json(manifest_key(settings, run_id), outline)
    log.info("plan: %d objects in s3://%s/%s [%s, %s): %d to process in %d batches (%d slices), "
             "%d already recorded; %.1fs", listed, bucket, prefix, start, end, listed - skipped, batches,
             len(slices), skipped, time.perf_counter() - t0)
    return outline


def slice_ranges(batches: int, max_slices: int) -> list[dict[str, int]]:
    """Contiguous ranges of batch numbers, at most ``max_slices`` of them, sizes differing by <= 1."""
    count = min(batches, max_slices)
    bounds = [round(n * batches / count) for n in range(count + 1)] if count else []
    return [{"slice": n, "first": bounds[n], "stop": bounds[n + 1]} for n in range(count)]


def _batch(settings: Settings, run_id: str, batch_no: int) -> list[SourceItem]:
    doc = S3Store(settings).get_json(plan_key(settings, run_id, batch_no))
    return [SourceItem.from_dict(d) for d in doc["items"]]


# ---------------------------------------------------------------- embed, index, decide (per slice)

def run_engine(settings: Settings) -> Engine:
    """The Engine of a DAG task: with the feature store (NDID_STORE_LOCAL_FEATURES), so embed keeps
    every image's verification features and decide reads them instead of re-reading images."""
    from .feature_store import FeatureStore

    return Engine(settings, feature_store=FeatureStore(settings) if settings.store_local_features else None)


def embed(engine: Engine, part: dict[str, int], run_id: str, run_at: str) -> dict[str, Any]:
    """Signals for every batch of the slice; a batch already staged (by an earlier try) is kept."""
    settings = engine.settings
    store = S3Store(settings)
    counts: Counter[str] = Counter()
    t0 = time.perf_counter()
    for batch_no in range(part["first"], part["stop"]):
        key = staging_key(settings, run_id, batch_no)
        if store.exists(key):
            counts["batches_resumed"] += 1
            continue
        items = _batch(settings, run_id, batch_no)
        prepared = engine.prepare(items, run_id, run_at)
        counts["feature_bytes"] += engine.keep_local_features(prepared)
        store.put_bytes(key, pack_prepared(prepared))
        counts.update({"batches": 1, "images": len(prepared.images), "errors": len(prepared.errors)})
        seconds = time.perf_counter() - t0
        log.info("embed slice %d: batch %d done (%d/%d), %d images so far, %.1f img/s", part["slice"], batch_no,
                 batch_no - part["first"] + 1, part["stop"] - part["first"], counts["images"] + counts["errors"],
                 (counts["images"] + counts["errors"]) / max(seconds, 1e-9))
    return {**part, **counts, "embed_s": round(time.perf_counter() - t0, 3)}


def index(engine: Engine, part: dict[str, int], run_id: str) -> dict[str, Any]:
    """Upsert every staged batch of the slice (idempotent: stable keys, decisions kept)."""
    settings = engine.settings
    store = S3Store(settings)
    rows = 0
    for batch_no in range(part["first"], part["stop"]):
        prepared = unpack_prepared(store.get_bytes(staging_key(settings, run_id, batch_no)), engine.resnet)
        engine.index_prepared(prepared, run_id)
        rows += len(prepared.images)
    store.put_json(indexed_key(settings, run_id, part["slice"]), {**part, "rows": rows})
    log.info("index slice %d: upserted %d rows from %d batches", part["slice"], rows, part["stop"] - part["first"])
    return {**part, "rows": rows}


def require_indexed(settings: Settings, run_id: str) -> None:
    """Decisions need every image of the run in the index (an image is compared with all earlier
    ones): refuse to decide while a slice is not indexed yet (e.g. after clearing only some tasks)."""
    store = S3Store(settings)
    outline = store.get_json(manifest_key(settings, run_id))
    have = sum(1 for _ in store.iter_objects(f"{staging_root(settings, run_id)}indexed/"))
    if have < len(outline["slices"]):
        raise RuntimeError(f"run {run_id}: {have} of {len(outline['slices'])} slices indexed; "
                           f"decide runs after every index task has succeeded")


def decide(engine: Engine, part: dict[str, int], run_id: str, run_at: str) -> dict[str, Any]:
    """Decide, tag and record every batch of the slice; a batch recorded by an earlier try is kept."""
    settings = engine.settings
    require_indexed(settings, run_id)
    store = S3Store(settings)
    total: Counter[str] = Counter()
    t0 = time.perf_counter()
    for batch_no in range(part["first"], part["stop"]):
        marker = decided_key(settings, run_id, batch_no)
        if store.exists(marker):
            total.update(store.get_json(marker)["counts"])
            continue
        prepared = unpack_prepared(store.get_bytes(staging_key(settings, run_id, batch_no)), engine.resnet)
        records = engine.decide(prepared.images, run_id, run_at) + prepared.errors
        tagged = tag_duplicates(settings, records)
        write_records(settings, records)
        counts = count_records(records) + Counter({"tagged": tagged})
        store.put_json(marker, {"batch_no": batch_no, "counts": dict(counts)})
        total.update(counts)
        log.info("decide slice %d: batch %d done (%d/%d): %d objects, %d duplicates, %d errors, %.1fs",
                 part["slice"], batch_no, batch_no - part["first"] + 1, part["stop"] - part["first"],
                 counts["objects"], counts["decision:duplicate"], counts["decision:error"], time.perf_counter() - t0)
    return {**part, "counts": dict(total)}


def tag_duplicates(settings: Settings, records: list[DecisionRecord]) -> int:
    """Tag duplicates in their own bucket: duplicate-of, probability, decision version. An object
    deleted since it was listed keeps its record (noted in it) and is not tagged."""
    tagged = 0
    for r in records:
        if r.decision != "duplicate" or not r.id.startswith("s3://"):
            continue
        bucket, key = parse_s3_uri(r.id)
        try:
            S3Store(settings, bucket=bucket).put_tags(key, duplicate_tags(r))
            tagged += 1
        except Exception as exc:
            if not _object_gone(exc):
                raise
            r.error_message = "object deleted before it could be tagged"
    return tagged


def duplicate_tags(record: DecisionRecord) -> dict[str, str]:
    return {"ndid-duplicate-of": _tag_value(record.original_id),
            "ndid-probability": f"{record.probability:.4f}",
            "ndid-decision-version": _tag_value(f"{record.calibration_version}/{record.weights_mode}")}


def _object_gone(exc: Exception) -> bool:
    response = getattr(exc, "response", None) or {}
    return response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def _tag_value(value: str) -> str:
    """S3 tag values allow letters, digits, spaces and + - = . _ : / @ (<= 256 chars)."""
    return re.sub(r"[^A-Za-z0-9 +\-=._:/@]", "_", value)[-256:]


def write_records(settings: Settings, records: list[DecisionRecord]) -> None:
    """One object per record, at the key derived from the object (overwrites are identical)."""
    store = S3Store(settings)

    def put(record: DecisionRecord) -> None:
        created_ms = int(datetime.fromisoformat(record.created_at).timestamp() * 1000)
        store.put_json(record_key(settings, record.id, created_ms), record.to_dict())

    with ThreadPoolExecutor(RECORD_WRITERS) as pool:
        list(pool.map(put, records))


def count_records(records: list[DecisionRecord]) -> Counter[str]:
    """Counts that add up across batches and slices (see :func:`summary_from_counts`)."""
    counts: Counter[str] = Counter(objects=len(records))
    for r in records:
        counts[f"decision:{r.decision}"] += 1
        if r.decision == "error":
            counts[f"error:{r.error_reason}"] += 1
        else:
            counts[f"stage:{r.stage}"] += 1
            counts["stage2_images"] += r.stage2_pairs > 0
        counts["untrained"] += r.untrained
    return counts


def summary_from_counts(counts: dict[str, int], seconds: float | None = None) -> dict[str, Any]:
    def group(name: str) -> dict[str, int]:
        return {k.split(":", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith(name + ":") and v}

    decided = counts.get("objects", 0) - counts.get("decision:error", 0)
    out: dict[str, Any] = {"objects": counts.get("objects", 0), "decisions": group("decision"), "stages": group("stage"),
           "errors": group("error"), "stage2_share": counts.get("stage2_images", 0) / decided if decided else 0.0,
           "untrained": counts.get("untrained", 0) > 0, "tagged": counts.get("tagged", 0)}
    if seconds:
        out["seconds"] = round(seconds, 3)
        out["images_per_s"] = round(out["objects"] / seconds, 2) if seconds > 0 else None
    return out


# ---------------------------------------------------------------- summarize

def write_summary(settings: Settings, outline: dict[str, Any], parts: list[dict[str, Any]], partition_date: str,
                  seconds: float, untrained: bool) -> dict[str, Any]:
    total: Counter[str] = Counter()
    for part in parts:
        total.update(part.get("counts", {}))
    summary = summary_from_counts(total, seconds if total.get("objects") else None)
    run_id = outline["run_id"]
    summary.update({"run_id": run_id, "listed": outline["listed"], "skipped_already_decided": outline["skipped"],
                    "batches": outline["batches"], "slices": len(outline["slices"]), "window": outline["window"],
                    "records_prefix": f"s3://{settings.s3_bucket}/{records_prefix(settings)}",
                    "untrained": summary["untrained"] or untrained,
                    "written_at": datetime.now(UTC).isoformat(timespec="seconds")})
    if summary["objects"] != outline["listed"] - outline["skipped"]:  # the invariant, checked on every run
        raise PermanentError(f"run {run_id} recorded {summary['objects']} objects but planned "
                           f"{outline['listed'] - outline['skipped']}")
    S3Store(settings).put_json(run_prefix(settings, run_id, partition_date) + "_summary.json", summary)
    # the staging area (manifest, NPZ, checkpoints) stays so any task of the run can be cleared and
    # re-run; expire the staging prefix with an S3 lifecycle rule (README)
    log.info("run summary: %s", summary)
    return summary


# ---------------------------------------------------------------- reading records back

def window_records(settings: Settings, bucket: str, prefix: str, start: datetime | None,
                   end: datetime | None) -> dict[str, dict[str, Any] | None]:
    """Every object of a window -> its record (None where it has none): what a run promised.
    Reads one object per record; for checks, demos and audits, not for the hot path."""
    store = S3Store(settings)
    objects = [item_of(bucket, o) for o in S3Store(settings, bucket=bucket).iter_window(prefix, start, end)]

    def fetch(item: SourceItem) -> dict[str, Any] | None:
        key = record_key(settings, item.id, item.created_at_ms)
        return store.get_json(key) if store.exists(key) else None

    with ThreadPoolExecutor(RECORD_WRITERS) as pool:
        return dict(zip((i.id for i in objects), pool.map(fetch, objects), strict=True))


# ---------------------------------------------------------------- a whole run in one process

def run_all(settings: Settings, bucket: str, prefix: str, start: datetime | None, end: datetime | None,
            run_id: str, run_at: str, batch_size: int | None = None, reprocess: bool = False) -> dict[str, Any]:
    """Every step of a run in this process, in the DAG's order (for a run without Airflow, and for
    tests that inject faults between steps). Re-running it with the same run id resumes."""
    t0 = time.time()
    outline = plan(settings, bucket, prefix, start, end, batch_size or settings.ingest_batch_size, reprocess, run_id)
    with run_engine(settings) as engine:
        for part in outline["slices"]:
            embed(engine, part, run_id, run_at)
        for part in outline["slices"]:
            index(engine, part, run_id)
        parts = [decide(engine, part, run_id, run_at) for part in outline["slices"]]
    date = (start or datetime.fromisoformat(run_at)).strftime("%Y-%m-%d")
    return write_summary(settings, outline, parts, date, time.time() - t0, settings.untrained)
