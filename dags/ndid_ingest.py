"""ndid_ingest: scheduled (and backfillable) near-duplicate detection over new S3 images."""

from __future__ import annotations

import time

from airflow.sdk import CronDataIntervalTimetable, Param, dag, get_current_context, task
from ndid_airflow import (
    DAG_DEFAULTS,
    MILVUS_POOL,
    base_settings,
    fail_fast,
    partition_date,
    run_at,
    run_window,
    task_defaults,
    task_settings,
)

SETTINGS = base_settings()

DOC = f"""
### NDID ingestion ({"**UNTRAINED: random weights**" if SETTINGS.untrained else "pretrained weights"})

Every run takes the objects under **s3://`bucket`/`prefix`** whose *LastModified* falls in the run's
data interval (or the explicit `start`/`end` params), and gives each one exactly one record:

| step | what | parallel |
|---|---|---|
| `plan` | stream the listing, skip objects that already have a record (unless `reprocess`), write the manifest of batches to `{SETTINGS.s3_staging_prefix}` | - |
| `embed` | per slice of the manifest: fetch, decode, pHash + ResNet-50, staged as NPZ | mapped, parallel |
| `index` | per slice: upsert into Milvus | mapped, pool `{MILVUS_POOL}` |
| `decide` | per slice: candidates -> logistic regression -> geometric verification only when ambiguous -> S3 tags on duplicates -> one record per object | mapped, pool `{MILVUS_POOL}` |
| `summarize` | counts per decision / stage / error, stage-2 share, images/s | - |

At most {SETTINGS.ingest_max_parallel} mapped tasks per step, whatever the window size; each works
through its slice batch by batch and resumes after a retry.

**Outputs:** one record per object at `s3://<bucket>/{SETTINGS.s3_decisions_prefix}records/date=YYYY-MM-DD/hour=HH/<hash of object>.json`
(written after the object's tags, so a record means "done"), and the run's `_summary.json` under
`{SETTINGS.s3_decisions_prefix}runs/`. Retries, clears and re-runs rewrite the same keys.

**Failures:** settings / weights / calibration problems fail the task at once (no retries);
S3 or Milvus outages are retried {SETTINGS.task_retries} times with backoff. A bad object never fails
a run: it gets an error record. Re-run a failed window with *Clear*: it finishes what is missing.

**Backfill:** `airflow backfill create --dag-id ndid_ingest --from-date 2026-01-01 --to-date 2026-01-08`.
"""


@dag(
    dag_id="ndid_ingest",
    # data intervals (not trigger-only cron): each run owns [start, end), so backfills re-list a range
    schedule=CronDataIntervalTimetable(SETTINGS.ingest_schedule, timezone="UTC"),
    tags=["ndid", "ingestion", "untrained" if SETTINGS.untrained else "pretrained"],
    doc_md=DOC,
    default_args=task_defaults(SETTINGS),
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
    @task
    @fail_fast
    def plan() -> dict:
        from ndid_tasks import ingest_run

        ctx = get_current_context()
        p = ctx["params"]
        start, end = run_window(ctx)
        settings = task_settings()
        from ndid_tasks.weights import require_descriptor_weights

        require_descriptor_weights(settings)  # fail here, in seconds, not in every embed task
        outline = ingest_run.plan(settings, p["bucket"], p["prefix"], start, end, int(p["batch_size"]),
                                  bool(p["reprocess"]), ctx["run_id"])
        return {**outline, "started": time.time()}

    @task
    def slices(outline: dict) -> list[dict]:
        return outline["slices"]

    @task(map_index_template="slice {{ task.op_kwargs['part']['slice'] }}")
    @fail_fast
    def embed(part: dict) -> dict:
        from ndid_tasks import ingest_run

        ctx = get_current_context()
        settings = task_settings()
        with ingest_run.run_engine(settings) as engine:
            return ingest_run.embed(engine, part, ctx["run_id"], run_at(ctx))

    @task(pool=MILVUS_POOL, map_index_template="slice {{ task.op_kwargs['part']['slice'] }}")
    @fail_fast
    def index(part: dict) -> dict:
        from ndid_tasks import ingest_run

        settings = task_settings()
        with ingest_run.run_engine(settings) as engine:
            return ingest_run.index(engine, part, get_current_context()["run_id"])

    @task(pool=MILVUS_POOL, map_index_template="slice {{ task.op_kwargs['part']['slice'] }}")
    @fail_fast
    def decide(part: dict) -> dict:
        from ndid_tasks import ingest_run

        ctx = get_current_context()
        settings = task_settings()
        with ingest_run.run_engine(settings) as engine:
            return ingest_run.decide(engine, part, ctx["run_id"], run_at(ctx))

    @task(trigger_rule="none_failed")
    @fail_fast
    def summarize(parts: list[dict] | None, outline: dict) -> dict:
        from ndid_tasks import ingest_run

        ctx = get_current_context()
        settings = task_settings()
        # by index up to len(): iterating a lazy XCom sequence asks for one item past its end, which
        # Airflow logs as an "[error] XCom not found" line on every successful run
        results = [parts[i] for i in range(len(parts))] if parts else []
        return ingest_run.write_summary(settings, outline, results, partition_date(ctx),
                                        time.time() - outline["started"], settings.untrained)

    outline = plan()
    embedded = embed.expand(part=slices(outline))
    indexed = index.expand(part=embedded)
    decided = decide.expand(part=indexed)
    summarize(decided, outline)


ndid_ingest()
