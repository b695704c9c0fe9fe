"""The DAG path's steps for one window (embed, index, then decide in a fresh process), with and
without stored verification features.

    python scripts/measure_dag_path.py [ORIGINALS_DIR] [N] [ATTACK]

Starts its own SeaweedFS S3 (temporary state), ingests N photos in one window and an attacked copy
of each in the next, then times the second window's `embed` (S3 reads, decoding, pHash, the
descriptor, SIFT and its visual words, features written to the feature store) and `index`, and its
`decide` in a fresh Engine: reading every
candidate's (and query's) SIFT features from the feature store, versus re-reading and decoding the
images from S3 and running SIFT again (NDID_STORE_LOCAL_FEATURES=false). ATTACK names the copies'
attack in ndid_tasks.augment (``crop`` by default; ``tight_crop`` makes the closer look re-read
originals from S3). Prints a JSON line; ``dag_path_images_per_s`` is the window's images over the
three steps' seconds (models warmed up first; a task's process start is not counted).
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ndid_tasks import augment, ingest_run, services
from ndid_tasks.config import Settings
from ndid_tasks.storage import S3Store


def second() -> datetime:
    time.sleep(1.05 - time.time() % 1)
    return datetime.now(UTC).replace(microsecond=0)


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def main(folder: str, n: int, attack: str = "crop") -> dict:
    state = Path(tempfile.mkdtemp(prefix="ndid-dagpath-"))
    # (NDID_* from the environment apply too, e.g. NDID_MODEL_DIR for encoders compiled before)
    base = Settings.from_env(state_dir=str(state), s3_endpoint_url="http://127.0.0.1:28433", weights_mode="random",
                             s3_bucket="dagpath", milvus_uri=str(state / "milvus.db"))
    services.start_s3(base)
    access, secret = services.ensure_local_credentials(base)
    base = base.replace(s3_access_key=access, s3_secret_key=secret)
    try:
        store = S3Store(base)
        store.ensure_bucket()
        files = sorted(Path(folder).glob("*.jpg"))[:n]
        rng = np.random.default_rng(0)
        make_copy = getattr(augment, f"attack_{attack}")
        t0 = second()
        for f in files:
            store.put_bytes(f"images/orig/{f.name}", f.read_bytes())
        t1 = second()
        for f in files:
            store.put_bytes(f"images/copy/{f.name}", jpeg(make_copy(Image.open(f).convert("RGB"), rng), 75))
        t2 = second()
        out: dict = {"images_per_window": len(files), "attack": attack}
        for stored in (True, False):
            s = base.replace(store_local_features=stored, milvus_collection_prefix=f"p{int(stored)}",
                             s3_decisions_prefix=f"d{int(stored)}/", s3_staging_prefix=f"s{int(stored)}/")
            ingest_run.run_all(s, s.s3_bucket, "images/", t0, t1, "first", t1.isoformat())
            outline = ingest_run.plan(s, s.s3_bucket, "images/", t1, t2, 64, False, "second")
            with ingest_run.run_engine(s) as engine:
                engine.warm_up()
                embed_s = index_s = 0.0
                for part in outline["slices"]:
                    started = time.perf_counter()
                    embedded = ingest_run.embed(engine, part, "second", t2.isoformat())
                    embed_s += time.perf_counter() - started
                    started = time.perf_counter()
                    ingest_run.index(engine, part, "second")
                    index_s += time.perf_counter() - started
            duplicates = 0
            with ingest_run.run_engine(s) as fresh:  # a fresh process: nothing cached
                fresh.warm_up()
                started = time.perf_counter()
                for part in outline["slices"]:
                    duplicates += ingest_run.decide(fresh, part, "second", t2.isoformat())["counts"].get("decision:duplicate", 0)
                seconds = time.perf_counter() - started
            name = "stored_features" if stored else "re_read_images"
            out[name] = {"embed_s": round(embed_s, 2), "index_s": round(index_s, 2),
                         "decide_s": round(seconds, 2), "images_per_s": round(len(files) / seconds, 1),
                         "dag_path_images_per_s": round(len(files) / (embed_s + index_s + seconds), 1),
                         "geometry_s": round(fresh.timings["geometry_s"], 2), "duplicates": duplicates,
                         "closer_looks": fresh.geometry.closer_looks,
                         "faint_looks": fresh.geometry.faint_looks, "pictures_re_read": fresh.full_pictures_read}
            if stored:
                out["feature_bytes_per_image"] = round(embedded.get("feature_bytes", 0) / max(embedded["images"], 1))
        out["speedup"] = round(out["re_read_images"]["decide_s"] / out["stored_features"]["decide_s"], 2)
        return out
    finally:
        services.stop_s3(base)


if __name__ == "__main__":
    args = sys.argv[1:]
    print(json.dumps(main(args[0] if args else "../shared/data/originals", int(args[1]) if len(args) > 1 else 64,
                          args[2] if len(args) > 2 else "crop")))
