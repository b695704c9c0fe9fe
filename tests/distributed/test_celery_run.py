"""NDID distributed for real: PostgreSQL, Redis, Airflow's scheduler, dag-processor and api-server,
two Celery workers and a Milvus Lite server with two pool slots (scripts/distributed.py, the local
shape of docker-compose.yml). A run of a few hundred images, triggered through the Airflow CLI like
an operator would, is split across both workers and gives the same decisions as the same steps run
in one process (``ingest_run.run_all``, what ``dag.test`` executes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ndid_tasks import augment, ingest_run
from ndid_tasks.storage import S3Store
from tests.conftest import ROOT, SKIMAGE_PHOTOS, jpeg_bytes, make_noise_image, skimage_photo

pytestmark = pytest.mark.integration
sys.path.insert(0, str(ROOT / "scripts"))

MISSING = [name for name in ("redis-server", "runuser") if shutil.which(name) is None] + \
    ([] if list(Path("/usr/lib/postgresql").glob("*/bin/postgres")) else ["postgresql"])


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if MISSING:
        pytest.skip(f"Debian packages missing: {MISSING} (`make test` installs them when run as root)")
    from distributed import Stack

    from tests.conftest import _free_port

    stack = Stack(tmp_path_factory.mktemp("dist"), base=_free_port())
    try:
        stack.up()
        yield stack
    finally:
        stack.purge()


def airflow(stack, *args: str) -> str:
    env = {**os.environ, **stack.airflow_env()}
    out = subprocess.run([sys.executable, "-m", "airflow", *args], env=env, capture_output=True, text=True,
                         timeout=180, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def json_out(text: str):
    """The JSON document of a `-o json` command (log lines may come before it)."""
    return json.loads(next(line for line in reversed(text.splitlines()) if line.startswith(("[", "{"))))


def upload(settings, count_copies: int = 3) -> tuple:
    """10 photos, their attacked copies, and noise pictures: a few hundred objects."""
    store = S3Store(settings)
    store.ensure_bucket()
    rng = np.random.default_rng(3)
    from datetime import UTC, datetime

    time.sleep(1.05 - time.time() % 1)
    start = datetime.now(UTC).replace(microsecond=0)
    photos = {n: skimage_photo(n).resize((256, 192)) for n in SKIMAGE_PHOTOS}
    for n, img in photos.items():
        store.put_bytes(f"images/orig/{n}.jpg", jpeg_bytes(img))
    time.sleep(1.1)
    attacks = [augment.attack_jpeg, augment.attack_crop, augment.attack_colour]
    for n, img in photos.items():
        for k in range(count_copies):
            store.put_bytes(f"images/copy/{n}_{k}.jpg", jpeg_bytes(attacks[k](img, rng)))
    for seed in range(200):
        store.put_bytes(f"images/noise/{seed:03d}.jpg", jpeg_bytes(make_noise_image(seed, size=(96, 64))))
    time.sleep(1.05 - time.time() % 1)
    return start, datetime.now(UTC).replace(microsecond=0)


def test_a_run_split_across_two_celery_workers_decides_like_one_process(stack):
    env = stack.airflow_env()
    settings = stack.settings.replace(s3_access_key=env["NDID_S3_ACCESS_KEY"], s3_secret_key=env["NDID_S3_SECRET_KEY"],
                                      milvus_uri=env["NDID_MILVUS_URI"])
    start, end = upload(settings)
    deadline = time.monotonic() + 180
    while "ndid_ingest" not in airflow(stack, "dags", "list", "-o", "plain"):
        assert time.monotonic() < deadline, "the dag-processor never parsed ndid_ingest"
        time.sleep(3)
    airflow(stack, "dags", "unpause", "ndid_ingest")
    conf = {"bucket": settings.s3_bucket, "prefix": "images/", "start": start.isoformat(), "end": end.isoformat(),
            "batch_size": 16}
    triggered = json_out(airflow(stack, "dags", "trigger", "ndid_ingest", "--conf", json.dumps(conf), "-o", "json"))
    run_id = triggered[0]["dag_run_id"] if isinstance(triggered, list) else triggered["dag_run_id"]
    deadline = time.monotonic() + 900
    while True:
        runs = json_out(airflow(stack, "dags", "list-runs", "ndid_ingest", "-o", "json"))
        state = next(r["state"] for r in runs if r["run_id"] == run_id)
        if state in ("success", "failed"):
            break
        assert time.monotonic() < deadline, f"run {run_id} still {state}"
        time.sleep(5)
    assert state == "success", (Path(stack.root / "logs" / "scheduler.log").read_text()[-3000:])

    # every object exactly one record, and the decisions of one process over a fresh collection
    distributed = {k: (r["decision"], r["original_id"]) for k, r in
                   ingest_run.window_records(settings, settings.s3_bucket, "images/", start, end).items()}
    assert len(distributed) == 10 + 30 + 200 and all(v is not None for v in distributed.values())
    single = settings.replace(milvus_collection_prefix="single", s3_decisions_prefix="single/decisions/",
                              s3_staging_prefix="single/staging/")
    ingest_run.run_all(single, settings.s3_bucket, "images/", start, end, "single", end.isoformat(), batch_size=16)
    reference = {k: (r["decision"], r["original_id"]) for k, r in
                 ingest_run.window_records(single, settings.s3_bucket, "images/", start, end).items()}
    assert distributed == reference
    duplicates = sum(d == "duplicate" for d, _ in distributed.values())
    assert duplicates >= 20  # most of the 30 copies (untrained weights)

    # the mapped tasks really ran on both workers
    import sqlalchemy

    engine = sqlalchemy.create_engine(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    with engine.connect() as conn:
        hosts = dict(conn.execute(sqlalchemy.text(
            "SELECT hostname, count(*) FROM task_instance WHERE run_id = :r GROUP BY hostname"), {"r": run_id}).all())
    engine.dispose()
    assert set(hosts) == {"worker1", "worker2"}, hosts
    print(f"\ndistributed run {run_id}: {len(distributed)} objects, {duplicates} duplicates, tasks per worker {hosts}")
