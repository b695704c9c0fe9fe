"""ndid_recalibrate for real: labels in SeaweedFS S3, vectors in Milvus Lite, run by Airflow 3."""

import json

import numpy as np
import pytest

from ndid_tasks import augment
from ndid_tasks.calibration_store import CalibrationStore
from ndid_tasks.pipeline import Engine, local_items
from ndid_tasks.storage import S3Store
from tests.conftest import jpeg_bytes, make_noise_image

pytestmark = pytest.mark.integration


def index_and_label(settings, photos, tmp_path):
    rng = np.random.default_rng(0)
    names = list(photos)[:8]
    for name in names:
        (tmp_path / f"{name}.jpg").write_bytes(jpeg_bytes(photos[name]))
        (tmp_path / f"{name}_c.jpg").write_bytes(jpeg_bytes(augment.attack_jpeg(photos[name], rng)))
        (tmp_path / f"{name}_d.jpg").write_bytes(jpeg_bytes(augment.attack_resize(photos[name], rng)))
    engine = Engine(settings)
    try:
        engine.ingest(local_items([tmp_path]), run_id="setup", run_at="t")
    finally:
        engine.close()
    uid = {p.name[:-4]: f"file://{p.resolve()}" for p in tmp_path.glob("*.jpg")}
    rows = [{"image_a": uid[n], "image_b": uid[f"{n}_{c}"], "is_duplicate": True, "auditor": "alice",
             "labelled_at": "2026-11-01T00:00:00Z"} for n in names for c in "cd"]
    rows += [{"image_a": uid[a], "image_b": uid[b], "is_duplicate": False, "auditor": "bob",
              "labelled_at": "2026-11-01T00:00:00Z"} for i, a in enumerate(names) for b in names[i + 1:i + 3]]
    return rows


def test_too_few_labels_skip_and_enough_labels_are_evaluated(dagbag, airflow_env, photos, tmp_path):
    settings = airflow_env.replace(weights_mode="random")
    rows = index_and_label(settings, photos, tmp_path)
    store = S3Store(settings)
    dag = dagbag.get_dag("ndid_recalibrate")

    store.put_bytes("labels/batch-1.jsonl", "".join(json.dumps(r) + "\n" for r in rows[:4]).encode())
    dr = dag.test()
    refresh = dr.get_task_instance("refresh_whitening")
    assert refresh.state == "success"
    assert refresh.xcom_pull(task_ids="refresh_whitening")["status"] == "not due"  # 24 images < 1000
    ti = dr.get_task_instance("recalibrate")
    assert ti.state == "skipped"
    assert not store.exists("calibration/active.json")
    # indexed with the words on: the first maintenance run scans and adds nothing (the one image
    # without keypoints cannot have words), and records that, so the next run is not due
    words = dr.get_task_instance("backfill_words").xcom_pull(task_ids="backfill_words")
    assert words["status"] == "done" and words["added"] == 0 and words["had_words"] + words["no_keypoints"] == 24
    # a skipped run is recorded too, with its reason (the dashboard shows why nothing changed)
    [skipped] = [store.get_json(o.key) for o in store.iter_objects("calibration/evaluations/skipped-")]
    assert skipped["status"] == "skipped" and "need >= " in skipped["reason"] and skipped["usable"] == 4

    csv = "image_a,image_b,is_duplicate,auditor,labelled_at\n" + "".join(
        f"{r['image_a']},{r['image_b']},{str(r['is_duplicate']).lower()},{r['auditor']},{r['labelled_at']}\n"
        for r in rows[4:])
    store.put_bytes("labels/batch-2.csv", csv.encode())
    # a malformed file beside them: a typo'd line and a row without is_duplicate (it used to fail
    # all 3 tries, or become a negative)
    store.put_bytes("labels/typo.jsonl", (json.dumps(rows[0]) + "\n" + '{"image_a": "x", "is_duplicate": tru}\n'
                                          + json.dumps({k: v for k, v in rows[1].items() if k != "is_duplicate"})
                                          + "\n").encode())
    dr = dag.test()
    assert dr.get_task_instance("recalibrate").state == "success"
    assert dr.get_task_instance("backfill_words").xcom_pull(task_ids="backfill_words")["status"] == "not due"
    evaluations = [o.key for o in store.iter_objects("calibration/evaluations/")
                   if not o.key.startswith("calibration/evaluations/skipped-")]
    assert len(evaluations) == 1
    evaluation = store.get_json(evaluations[0])
    assert evaluation["usable"] == len(rows) and evaluation["status"] in ("promoted", "rejected")
    assert evaluation["label_file_error_count"] == 2
    assert [(e["file"], e["line"]) for e in evaluation["label_file_errors"]] == [("labels/typo.jsonl", 2),
                                                                              ("labels/typo.jsonl", 3)]
    # 24 indexed images are too few for the system's own check set: never promoted blind
    assert evaluation["status"] == "rejected" and any("no check set" in r for r in evaluation["reasons"])
    active = CalibrationStore(settings).active()
    if evaluation["status"] == "promoted":
        assert active is not None and active.version == evaluation["candidate_version"]
        assert active.training["source"] == "audited_labels"
    else:
        assert active is None  # the shipped default stays in force


def test_whitening_refresh_from_the_dag_switches_the_index(dagbag, airflow_env, photos, tmp_path):
    """param refresh_whitening=always: fit on the index, re-index, move active.json -- then
    recalibrate (no labels: skipped) runs against the new calibration."""
    settings = airflow_env.replace(weights_mode="random")
    for k in range(24):  # a refresh needs >= 30 images decided unique
        (tmp_path / f"noise_{k}.jpg").write_bytes(jpeg_bytes(make_noise_image(200 + k)))
    index_and_label(settings, photos, tmp_path)
    before = Engine(settings)
    try:
        old_collection, rows = before.index.images, before.index.count()
    finally:
        before.close()
    dr = dagbag.get_dag("ndid_recalibrate").test(run_conf={"refresh_whitening": "always"})
    ti = dr.get_task_instance("refresh_whitening")
    assert ti.state == "success"
    result = ti.xcom_pull(task_ids="refresh_whitening")
    assert result["status"] == "activated" and result["previous_collection"] == old_collection
    assert result["reindex"]["rows"] == rows
    active = CalibrationStore(settings).active()
    assert active.whitening_version == result["whitening"] and active.training["source"] == "index"
    after = Engine(settings)
    try:
        assert after.index.images == result["collection"] != old_collection and after.index.count() == rows
    finally:
        after.close()
    assert dr.get_task_instance("recalibrate").state == "skipped"


def test_backfill_words_gives_images_indexed_without_words_theirs(dagbag, airflow_env, photos, tmp_path):
    """Images indexed before the words existed (or under another vocabulary) get them from the
    scheduled maintenance run; the next run finds nothing to do."""
    settings = airflow_env.replace(weights_mode="random")
    for name in list(photos)[:4]:
        (tmp_path / f"{name}.jpg").write_bytes(jpeg_bytes(photos[name]))
    with Engine(settings.replace(visual_words=False)) as engine:
        engine.ingest(local_items([tmp_path]), run_id="setup", run_at="t")
    dag = dagbag.get_dag("ndid_recalibrate")

    dr = dag.test(run_conf={"refresh_whitening": "never"})
    ti = dr.get_task_instance("backfill_words")
    assert ti.state == "success"
    result = ti.xcom_pull(task_ids="backfill_words")
    assert result["status"] == "done" and result["added"] == 4 and result["rows"] == 4, result
    with Engine(settings) as engine:
        assert engine.index.words == result["collection"] and engine.index.count(engine.index.words) == 4
    again = dag.test(run_conf={"refresh_whitening": "never"}).get_task_instance("backfill_words")
    assert again.xcom_pull(task_ids="backfill_words")["status"] == "not due"
