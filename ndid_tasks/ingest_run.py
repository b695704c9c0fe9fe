"""The steps of one ingestion run over S3, one function per DAG task (no Airflow here).

    plan      list objects whose LastModified is in [start, end) -> batches (skips finished ones)
    embed     fetch + decode + pHash + ResNet for a batch -> staged NPZ in S3     (parallel)
    index     upsert a staged batch into Milvus                                   (serialised for Lite)
    decide    decide a staged batch -> decision records JSONL in S3               (serialised for Lite)
    tag       S3 object tags on duplicates
    summarize counts per decision / stage / error, CLIP share, images/s -> _summary.json

Object names depend only on (run id, batch number), so a retried or cleared task overwrites its
own output and never duplicates it. Decisions depend only on ingestion order (created_at, id), so
they are the same however the run is split or re-run.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, datetime
from typing import Any

from .config import Settings
from .pipeline import Engine, SourceItem, pack_prepared, summarize, unpack_prepared
from .storage import S3Store

log = logging.getLogger(__name__)


def safe_run_id(run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]", "_", run_id)[:200]


def run_prefix(settings: Settings, run_id: str, partition_date: str) -> str:
    return f"{settings.s3_decisions_prefix}date={partition_date}/run={safe_run_id(run_id)}/"


def staging_key(settings: Settings, run_id: str, batch_no: int) -> str:
    return f"{settings.s3_staging_prefix}run={safe_run_id(run_id)}/batch-{batch_no:05d}.npz"


def records_key(settings: Settings, run_id: str, partition_date: str, batch_no: int) -> str:
    return f"{run_prefix(settings, run_id, partition_date)}batch-{batch_no:05d}.jsonl"


def plan(settings: Settings, engine: Engine, bucket: str, prefix: str, start: datetime | None,
         end: datetime | None, batch_size: int, reprocess: bool, run_id: str) -> dict[str, Any]:
    """Objects in the window, minus those another run already decided (unless ``reprocess``)."""
    store = S3Store(settings, bucket=bucket)
    objects = store.list_window(prefix, start, end)
    items = [SourceItem(f"s3://{bucket}/{o.key}", f"s3://{bucket}/{o.key}",
                        int(o.last_modified.timestamp() * 1000), o.size) for o in objects]
    skipped = 0
    if not reprocess and items:
        rows = engine.index.get_rows([i.id for i in items], ["run_id", "created_at", "decision"])
        todo = []
        for item in items:
            row = rows.get(item.id)
            done_elsewhere = (row is not None and row["decision"] and row["run_id"] != run_id
                              and row["created_at"] == item.created_at_ms)  # same object version
            if done_elsewhere:
                skipped += 1
            else:
                todo.append(item)
        items = todo
    batches = [{"batch_no": n, "items": [i.to_dict() for i in items[s:s + batch_size]]}
               for n, s in enumerate(range(0, len(items), batch_size))]
    log.info("plan: %d objects in s3://%s/%s [%s, %s): %d to process in %d batches, %d already decided",
             len(objects), bucket, prefix, start, end, len(items), len(batches), skipped)
    return {"listed": len(objects), "skipped": skipped, "batches": batches}


def embed(settings: Settings, engine: Engine, batch: dict[str, Any], run_id: str, run_at: str) -> dict[str, Any]:
    items = [SourceItem.from_dict(d) for d in batch["items"]]
    t0 = time.perf_counter()
    prepared = engine.prepare(items, run_id, run_at)
    key = staging_key(settings, run_id, batch["batch_no"])
    S3Store(settings).put_bytes(key, pack_prepared(prepared))
    seconds = time.perf_counter() - t0
    log.info("embed batch %d: %d images, %d errors in %.1fs (%.1f img/s)", batch["batch_no"],
             len(prepared.images), len(prepared.errors), seconds, len(items) / max(seconds, 1e-9))
    return {"batch_no": batch["batch_no"], "staged_key": key, "images": len(prepared.images),
            "errors": len(prepared.errors), "embed_s": round(seconds, 3)}


def index(settings: Settings, engine: Engine, staged: dict[str, Any], run_id: str) -> dict[str, Any]:
    prepared = unpack_prepared(S3Store(settings).get_bytes(staged["staged_key"]), engine.resnet)
    engine.index_prepared(prepared, run_id)
    log.info("index batch %d: upserted %d rows", staged["batch_no"], len(prepared.images) + len(prepared.errors))
    return staged


def decide(settings: Settings, engine: Engine, staged: dict[str, Any], run_id: str, run_at: str,
           partition_date: str) -> dict[str, Any]:
    store = S3Store(settings)
    prepared = unpack_prepared(store.get_bytes(staged["staged_key"]), engine.resnet)
    t0 = time.perf_counter()
    records = engine.decide(prepared.images, run_id, run_at) + prepared.errors
    order = {im.id: n for n, im in enumerate(prepared.images)}
    records.sort(key=lambda r: (r.decision == "error", order.get(r.id, 0), r.id))
    key = records_key(settings, run_id, partition_date, staged["batch_no"])
    store.put_jsonl(key, [r.to_dict() for r in records])
    summary = summarize(records)
    log.info("decide batch %d: %s in %.1fs -> s3://%s/%s", staged["batch_no"], summary["decisions"],
             time.perf_counter() - t0, settings.s3_bucket, key)
    return {**staged, "records_key": key, "summary": summary}


def tag(settings: Settings, decided: dict[str, Any]) -> dict[str, Any]:
    """Tag duplicates in their own bucket: duplicate-of, probability, decision version."""
    from .storage import parse_s3_uri

    records = S3Store(settings).get_jsonl(decided["records_key"])
    tagged = 0
    for r in records:
        if r["decision"] != "duplicate" or not r["id"].startswith("s3://"):
            continue
        bucket, key = parse_s3_uri(r["id"])
        S3Store(settings, bucket=bucket).put_tags(key, {
            "ndid-duplicate-of": _tag_value(r["original_id"]),
            "ndid-probability": f"{r['probability']:.4f}",
            "ndid-decision-version": _tag_value(f"{r['calibration_version']}/{r['weights_mode']}"),
        })
        tagged += 1
    log.info("tag batch %d: %d duplicates tagged", decided["batch_no"], tagged)
    return {**decided, "tagged": tagged}


def _tag_value(value: str) -> str:
    """S3 tag values allow letters, digits, spaces and + - = . _ : / @ (<= 256 chars)."""
    return re.sub(r"[^A-Za-z0-9 +\-=._:/@]", "_", value)[-256:]


def write_summary(settings: Settings, results: list[dict[str, Any]], planned: dict[str, Any], run_id: str,
                  partition_date: str, seconds: float, untrained: bool) -> dict[str, Any]:
    rows = []
    for res in results:
        rows += S3Store(settings).get_jsonl(res["records_key"])
    summary = summarize(rows, seconds if rows else None)
    summary.update({"run_id": run_id, "listed": planned["listed"], "skipped_already_decided": planned["skipped"],
                    "batches": len(results), "tagged": sum(r.get("tagged", 0) for r in results),
                    "records_prefix": f"s3://{settings.s3_bucket}/{run_prefix(settings, run_id, partition_date)}",
                    "untrained": summary["untrained"] or untrained,
                    "written_at": datetime.now(UTC).isoformat(timespec="seconds")})
    S3Store(settings).put_json(run_prefix(settings, run_id, partition_date) + "_summary.json", summary)
    # staged NPZ files stay so that any task of the run can be cleared and re-run; expire the
    # staging prefix with an S3 lifecycle rule (README)
    log.info("run summary: %s", summary)
    return summary
