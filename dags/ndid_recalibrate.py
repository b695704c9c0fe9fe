"""ndid_recalibrate: refit the decision model on audited labels; promote only if it is not worse."""

from __future__ import annotations

from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException
from ndid_airflow import DAG_DEFAULTS, MILVUS_POOL, base_settings, fail_fast, task_defaults, task_settings

from ndid_tasks.labels import labels_asset_uri

SETTINGS = base_settings()
LABELS = Asset(labels_asset_uri(SETTINGS), extra={"format": "jsonl or csv"})

DOC = f"""
### NDID recalibration

Runs **{SETTINGS.recalibrate_schedule}** and whenever new audited labels land (asset `{LABELS.uri}`:
the NDID review page, Plugins ▸ NDID, emits an event for every label through the Airflow API;
any other labelling tool can do the same after writing a file).

Labels are JSON Lines or CSV objects under `s3://{SETTINGS.s3_bucket}/{SETTINGS.s3_labels_prefix}` with
`image_a, image_b, is_duplicate, auditor, labelled_at` (image ids as in the decision records).

1. features for every labelled pair (pHash distance, ResNet cosine from Milvus; SIFT inliers and CLIP computed);
2. both logistic regressions fitted on a training split;
3. candidate vs the **active** calibration on the held-out labels (F1 and average precision);
4. the candidate is stored under `{SETTINGS.s3_calibration_prefix}versions/`, the comparison under
   `{SETTINGS.s3_calibration_prefix}evaluations/`, and `active.json` moves only if it is not worse.

Fewer than {SETTINGS.recalibrate_min_labels} usable labels (or only one class): the task is
**skipped** with the reason in its log, not failed.

Before that, `refresh_whitening` (param `refresh_whitening`: auto / always / never) fits the
descriptor whitening on the index itself once it holds {SETTINGS.whitening_min_images}+ images (or has
doubled since the last fit), re-indexes every row into the collection of the new whitening
(decisions copied), fits a calibration on synthetic pairs from the corpus, and moves `active.json`:
one atomic switch. It holds the `ndid_milvus` pool slot, so no ingest task writes meanwhile.

`backfill_words` (param `backfill_words`: auto / always / never) gives every indexed image its
visual words (the tight-crop candidates) when the words collection has fewer rows than the index:
after words were turned on, or a new vocabulary shipped (its collection starts empty). It reads the
SIFT features stored at ingest (else the image), skips images that have words, and so resumes
where an interrupted or retried run stopped; its log counts the rows as it goes. Images that cannot
have words (no keypoints) are recorded under `features/words-backfill/`, so the next run is not due.
"""


@dag(
    dag_id="ndid_recalibrate",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable(SETTINGS.recalibrate_schedule, timezone="UTC"),
                                 assets=[LABELS]),
    tags=["ndid", "calibration"],
    doc_md=DOC,
    default_args=task_defaults(SETTINGS),
    params={"refresh_whitening": Param("auto", enum=["auto", "always", "never"],
                                       description="fit a new descriptor whitening on the index and re-index"),
            "backfill_words": Param("auto", enum=["auto", "always", "never"],
                                    description="visual words for indexed images without them "
                                                "(auto: when the words collection is short of the index)")},
    **DAG_DEFAULTS,
)
def ndid_recalibrate():
    @task(pool=MILVUS_POOL)
    @fail_fast
    def refresh_whitening() -> dict:
        from ndid_tasks.pipeline import Engine
        from ndid_tasks.refresh import refresh_due, refresh_whitening

        settings = task_settings()
        mode = get_current_context()["params"]["refresh_whitening"]
        with Engine(settings) as engine:
            due, reason = refresh_due(engine)
            if mode == "never" or (mode == "auto" and not due):
                return {"status": "not due" if mode == "auto" else "disabled", "reason": reason}
            result = refresh_whitening(engine)
        return {k: v for k, v in result.items() if not k.startswith("_")}

    @task(pool=MILVUS_POOL)
    @fail_fast
    def recalibrate() -> dict:
        from ndid_tasks.pipeline import Engine
        from ndid_tasks.recalibration import recalibration_run

        settings = task_settings()
        with Engine(settings) as engine:
            result = recalibration_run(engine, get_current_context()["run_id"])
        if result["status"] == "skipped":
            raise AirflowSkipException(result["reason"])
        return result

    @task(pool=MILVUS_POOL)
    @fail_fast
    def backfill_words() -> dict:
        from ndid_tasks.ingest_run import run_engine
        from ndid_tasks.refresh import backfill_words_when_due

        with run_engine(task_settings()) as engine:  # reads the SIFT features stored at ingest
            return backfill_words_when_due(engine, get_current_context()["params"]["backfill_words"])

    refresh_whitening() >> recalibrate()
    backfill_words()


ndid_recalibrate()
