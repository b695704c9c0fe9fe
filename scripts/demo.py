"""`make demo`: the main job end to end on embedded defaults.

Starts the local services (SeaweedFS S3 + Milvus Lite server), uploads sample photos with attacked
copies, unrelated photos and a corrupt object to s3://ndid/images/demo/, runs the ndid_ingest DAG
for real (dag.test: every task, in one process), and prints the decisions and where they are.
"""

from __future__ import annotations

import io
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from airflow_env import ROOT, airflow_environ, local_weights_mode, prepare_airflow

SHARED = ROOT.parent / "shared" / "data"


def sample_images() -> list[tuple[str, bytes]]:
    """(key suffix, bytes): originals, their attacked copies, unrelated photos, broken objects."""
    import numpy as np
    from PIL import Image

    from ndid_tasks import augment

    rng = np.random.default_rng(0)
    if (SHARED / "originals").is_dir():
        originals = [(p.stem, Image.open(p).convert("RGB")) for p in sorted((SHARED / "originals").glob("*.jpg"))[:8]]
        unrelated = [(p.stem, Image.open(p).convert("RGB")) for p in sorted((SHARED / "distractors").iterdir())[:6]]
    else:  # a fresh checkout without ../shared: the photos that ship with scikit-image
        import skimage.data as d

        pics = {n: Image.fromarray(getattr(d, n)()).convert("RGB") for n in
                ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
                 "colorwheel", "camera")}
        names = list(pics)
        originals = [(n, pics[n]) for n in names[:5]]
        unrelated = [(n, pics[n]) for n in names[5:]]

    def jpeg(img, q=90):
        buf = io.BytesIO()
        img.convert("RGB").save(buf, "JPEG", quality=q)
        return buf.getvalue()

    out = [(f"originals/{n}.jpg", jpeg(img)) for n, img in originals]
    attacks = [("crop", augment.attack_crop), ("jpeg", augment.attack_jpeg), ("print_scan", augment.attack_print_scan),
               ("meme", augment.attack_meme_border), ("colour", augment.attack_colour),
               ("thumbnail", augment.attack_thumbnail)]
    copies = []
    for i, (n, img) in enumerate(originals):
        name, attack = attacks[i % len(attacks)]
        copies.append((f"copies/{n}_{name}.jpg", jpeg(attack(img, rng))))
    copies.append((f"copies/{originals[0][0]}_exact.jpg", out[0][1]))
    unrel = [(f"unrelated/{n}.jpg", jpeg(img)) for n, img in unrelated]
    broken = [("broken/truncated.jpg", jpeg(originals[0][1])[:700]), ("broken/notes.txt", b"not an image\n")]
    return out, copies + unrel + broken


def main() -> int:
    env = airflow_environ()
    os.environ.update(env)
    from ndid_tasks import services
    from ndid_tasks.config import Settings, load_env_file
    from ndid_tasks.storage import S3Store

    local_weights_mode(env["NDID_STATE_DIR"])
    load_env_file(env["NDID_STATE_DIR"])
    settings = Settings.from_env()
    print("== starting local services")
    for st in services.services_up(settings):
        print(f"   {st.name}: {st.address} (pid {st.pid})")
    load_env_file(env["NDID_STATE_DIR"])
    os.environ.setdefault("NDID_MILVUS_URI", services.milvus_server_uri())
    settings = Settings.from_env()
    prepare_airflow(env)

    store = S3Store(settings)
    store.ensure_bucket()
    first, later = sample_images()
    time.sleep(1.05 - time.time() % 1)
    start = datetime.now(UTC).replace(microsecond=0)
    for suffix, data in first:
        store.put_bytes(f"{settings.s3_images_prefix}demo/{suffix}", data)
    time.sleep(1.1)  # originals strictly before their copies (S3 times have 1 s resolution)
    for suffix, data in later:
        store.put_bytes(f"{settings.s3_images_prefix}demo/{suffix}", data)
    time.sleep(1.05 - time.time() % 1)
    end = datetime.now(UTC).replace(microsecond=0)
    print(f"== uploaded {len(first) + len(later)} objects to s3://{settings.s3_bucket}/{settings.s3_images_prefix}demo/")

    print("== running DAG ndid_ingest (airflow dag.test)")
    from airflow.dag_processing.dagbag import DagBag

    sys.path.insert(0, str(ROOT / "dags"))  # as Airflow's own processes do for the DAGs folder
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    if bag.import_errors:
        print(bag.import_errors)
        return 1
    conf = {"bucket": settings.s3_bucket, "prefix": f"{settings.s3_images_prefix}demo/",
            "start": start.isoformat(), "end": end.isoformat(), "reprocess": True}
    dag_run = bag.get_dag("ndid_ingest").test(run_conf=conf)
    print(f"== DAG run {dag_run.run_id}: {dag_run.state}")
    if dag_run.state != "success":
        return 1
    print_results(settings, conf, start, end, dag_run.run_id)
    return 0


def print_results(settings, conf: dict, start, end, run_id: str) -> None:
    from ndid_tasks.ingest_run import run_prefix, window_records
    from ndid_tasks.storage import S3Store

    records = window_records(settings, conf["bucket"], conf["prefix"], start, end)
    rows = [r for r in records.values() if r is not None]
    missing = [k for k, r in records.items() if r is None]
    date = start.strftime("%Y-%m-%d")
    summary = S3Store(settings).get_json(run_prefix(settings, run_id, date) + "_summary.json")
    short = lambda s: s.split("/demo/")[-1] if s else ""
    print(f"\n{'object':40s} {'decision':10s} {'original':34s} {'p':>6s}  stage")
    for r in sorted(rows, key=lambda r: r["id"]):
        extra = r["error_reason"] if r["decision"] == "error" else r["stage"]
        original = short(r["original_id"]) if r["decision"] == "duplicate" else ""
        print(f"{short(r['id']):40s} {r['decision']:10s} {original:34s} {r['probability']:6.3f}  {extra}")
    print(f"\nsummary: {summary}")
    print(f"records: {summary['records_prefix']} (one per object; {len(rows)} of {len(records)} objects "
          f"have one{', MISSING: ' + ', '.join(missing) if missing else ''})")
    if summary.get("untrained"):
        print("!! UNTRAINED run (random weights): decisions demonstrate the pipeline, not pretrained accuracy")
    print("The local S3 and Milvus servers keep running (try `.venv/bin/ndid query IMAGE`); "
          "`make services-down` stops them.")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
