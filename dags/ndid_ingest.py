"""ndid_ingest: scheduled (and backfillable) near-duplicate detection over new S3 images."""

from __future__ import annotations

import time
from datetime import timedelta

from airflow.sdk import CronDataIntervalTimetable, Param, dag, get_current_context, task
from ndid_airflow import (
    DAG_DEFAULTS,
    MILVUS_POOL,
    base_settings,
    partition_date,
    run_at,
    run_window,
    task_defaults,
    task_settings,
)

SETTINGS = base_settings()

DOC = f"""
### NDID ingestion

Every run takes the objects under **s3://`bucket`/`prefix`** whose *LastModified* falls in the run's
data interval (or the explicit `start`/`end` params), and for each one writes exactly one record:

| step | what | parallel |
|---|---|---|
| `plan` | list the window, skip objects another run already decided (unless `reprocess`) | - |
| `embed` | fetch, decode, pHash + ResNet-50 per batch; staged as NPZ under `{SETTINGS.s3_staging_prefix}` | mapped, parallel |
| `index` | upsert into Milvus | mapped, pool `{MILVUS_POOL}` |
| `decide` | candidates (pHash radius + ResNet top-K) -> logistic regression -> geometric verification (+ CLIP if calibrated) only when ambiguous | mapped, pool `{MILVUS_POOL}` |
| `tag` | S3 tags `ndid-duplicate-of`, `ndid-probability`, `ndid-decision-version` on duplicates | mapped |
| `summarize` | counts per decision / stage / error, stage-2 share, images/s (XCom + `_summary.json`) | - |

**Outputs:** `s3://<bucket>/{SETTINGS.s3_decisions_prefix}date=YYYY-MM-DD/run=<run id>/batch-NNNNN.jsonl`
(decision and error records) and `_summary.json` beside them. Retries overwrite, never duplicate.

**Backfill:** `airflow backfill create --dag-id ndid_ingest --from-date 2026-01-01 --to-date 2026-01-08`
re-processes exactly the objects of those intervals. Pool `{MILVUS_POOL}` must have 1 slot with a
Milvus Lite file; more with a Milvus server.
"""


@dag(
    dag_id="ndid_ingest",
    # data intervals (not trigger-only cron): each run owns [start, end), so backfills re-list a range
    schedule=CronDataIntervalTimetable(SETTINGS.ingest_schedule, timezone="UTC"),
    tags=["ndid", "ingestion"],
    doc_md=DOC,
    default_args=task_defaults(retries=3, retry_delay=timedelta(seconds=30)),
    **DAG_DEFAULTS,
    params={
        "bucket": Param(SETTINGS.s3_bucket, type="string", description="S3 bucket holding the images"),
        "prefix": Param(SETTINGS.s3_images_prefix, type="string", description="key prefix of the images"),
        "start": Param(None, type=["null", "string"], format="date-time",
                       description="explicit window start (UTC); empty: the data interval"),
        "end": Param(None, type=["null", "string"], format="date-time",
                     description="explicit window end, exclusive; empty: the data interval"),
        "batch_size": Param(SETTINGS.ingest_batch_size, type="integer", minimum=1, maximum=1000),
        "reprocess": Param(False, type="boolean", description="redo images that already have records"),
    },
)
def ndid_ingest():
    @task(pool=MILVUS_POOL)
    def plan() -> dict:
        from ndid_tasks import ingest_run
        from ndid_tasks.pipeline import Engine

        ctx = get_current_context()
        p = ctx["params"]
        start, end = run_window(ctx)
        settings = task_settings()
        engine = Engine(settings)
        try:
            planned = ingest_run.plan(settings, engine, p["bucket"], p["prefix"], start, end,
                                      int(p["batch_size"]), bool(p["reprocess"]), ctx["run_id"])
        finally:
            engine.close()
        planned["started"] = time.time()
        return planned

    @task
    def batches(planned: dict) -> list[dict]:
        return planned["batches"]

    @task(map_index_template="batch {{ task.op_kwargs['batch']['batch_no'] }}")
    def embed(batch: dict) -> dict:
        from ndid_tasks import ingest_run
        from ndid_tasks.pipeline import Engine

        ctx = get_current_context()
        settings = task_settings()
        engine = Engine(settings)
        return ingest_run.embed(settings, engine, batch, ctx["run_id"], run_at(ctx))

    @task(pool=MILVUS_POOL)
    def index(staged: dict) -> dict:
        from ndid_tasks import ingest_run
        from ndid_tasks.pipeline import Engine

        settings = task_settings()
        engine = Engine(settings)
        try:
            return ingest_run.index(settings, engine, staged, get_current_context()["run_id"])
        finally:
            engine.close()

    @task(pool=MILVUS_POOL)
    def decide(staged: dict) -> dict:
        from ndid_tasks import ingest_run
        from ndid_tasks.pipeline import Engine

        ctx = get_current_context()
        settings = task_settings()
        engine = Engine(settings)
        try:
            return ingest_run.decide(settings, engine, staged, ctx["run_id"], run_at(ctx), partition_date(ctx))
        finally:
            engine.close()

    @task
    def tag(decided: dict) -> dict:
        from ndid_tasks import ingest_run

        return ingest_run.tag(task_settings(), decided)

    @task(trigger_rule="none_failed")
    def summarize(results: list[dict] | None, planned: dict) -> dict:
        from ndid_tasks import ingest_run

        ctx = get_current_context()
        settings = task_settings()
        return ingest_run.write_summary(settings, list(results or []), planned, ctx["run_id"], partition_date(ctx),
                                        time.time() - planned["started"], settings.untrained)

    planned = plan()
    staged = embed.expand(batch=batches(planned))
    indexed = index.expand(staged=staged)
    decided = decide.expand(staged=indexed)
    tagged = tag.expand(decided=decided)
    summarize(tagged, planned)


ndid_ingest()
