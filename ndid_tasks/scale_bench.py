"""How cost grows with the index: ``ndid bench scale``.

The index grows to each size in turn (10 k, 100 k, 1 M rows ...) with synthetic rows of the real
shape (whitened 256-d unit vector, 64-bit pHash, raw descriptor in the raw collection, S3-like ids),
written through :meth:`ImageIndex.upsert` as ingest writes them, into a local ``milvus-lite server``
(its own process, so its memory and disk are measured apart). At each size:

* upsert rate of the last increment (rows/s);
* candidate search time per image, p50/p95 over batches of 64 near-copies of indexed rows (pHash
  top-k + ResNet HNSW top-k with the ingestion-order filter, asked as ``Matcher.candidates_many``
  asks during ingest), and the p50 of one query alone (``ndid query``);
* server memory (RSS) and disk bytes per image, and the searched vector bytes per row;
* with ``images``: the DAG path end to end (embed -> index -> decide in a fresh engine, real photos,
  real S3) against an index of that size, in images/s.

Then each metric's growth is fitted as a power law (slope on log-log axes) and plotted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .config import Settings
from .index import ImageIndex, IndexedImage

log = logging.getLogger(__name__)

UPSERT_BATCH = 1000
QUERIES = 640  # 10 ingest-sized batches of 64
SINGLE_QUERIES = 50


def synthetic_rows(start: int, count: int, dim: int, raw_dim: int, rng: np.random.Generator) -> list[IndexedImage]:
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    raws = np.abs(rng.standard_normal((count, raw_dim))).astype(np.float32)
    bits = rng.integers(0, 2, (count, 64)).astype(np.float32)
    out = []
    for k in range(count):
        n = start + k
        object_id = f"s3://photos-bucket/images/2026/{n % 12 + 1:02d}/{n % 28 + 1:02d}/{n:012d}-upload.jpg"
        out.append(IndexedImage(id=object_id, sha256=hashlib.sha256(object_id.encode()).hexdigest(), source=object_id,
                                width=1024, height=768, num_bytes=180_000, created_at=1_767_225_600_000 + n * 1000,
                                phash=bits[k], resnet=vectors[k], raw=raws[k], decision="unique", original_id=object_id,
                                run_id="scheduled__2026-01-01T00:00:00+00:00"))
    return out


def near_copies(index: ImageIndex, count: int, rng: np.random.Generator) -> list[IndexedImage]:
    """Queries: indexed rows with noise on the vector and a few pHash bits flipped."""
    rows = index.client.query(index.images, filter="", output_fields=["id", "phash", "resnet", "created_at"],
                              limit=count)
    out = []
    for row in rows:
        vector = np.asarray(row["resnet"], np.float32) + rng.normal(0, 0.02, len(row["resnet"])).astype(np.float32)
        bits = np.asarray(row["phash"], np.float32)
        flip = rng.choice(64, 6, replace=False)
        bits[flip] = 1 - bits[flip]
        out.append(IndexedImage(id="query:" + row["id"], sha256="", source="", width=0, height=0, num_bytes=0,
                                created_at=row["created_at"] + 1, phash=bits, resnet=vector / np.linalg.norm(vector)))
    return out


def search_latencies(index: ImageIndex, queries: Sequence[IndexedImage], settings: Settings,
                     batch: int = 1) -> list[float]:
    """Seconds of candidate search per image: pHash (top-16 within the radius) + ResNet top-K, asked
    for ``batch`` images per call as ``Matcher.candidates_many`` does (ingest: 64; a query: 1)."""
    out = []
    for start in range(0, len(queries), batch):
        group = queries[start:start + batch]
        latest = max(q.created_at for q in group)
        t0 = time.perf_counter()
        index.search_many("phash", [q.phash for q in group], 16 + 8, latest, radius=settings.phash_radius)
        index.search_many("resnet", [q.resnet for q in group], settings.resnet_top_k + 8, latest)
        out.append((time.perf_counter() - t0) / len(group))
    return out


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (from /proc), in MB."""
    total = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                children = (task / "children").read_text().split()
                pids += [int(c) for c in children]
        except OSError:
            continue
    return total / 1024


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def wait_for_index(index: ImageIndex, timeout: float = 600) -> float:
    """Seconds until search latency settles (Milvus builds indexes in the background)."""
    t0 = time.perf_counter()
    probe = near_copies(index, 64, np.random.default_rng(1))
    last = None
    while time.perf_counter() - t0 < timeout:
        now = float(np.median(search_latencies(index, probe, index.settings, batch=64)))
        if last is not None and now > 0.7 * last:
            break
        last = now
        time.sleep(5)
    return time.perf_counter() - t0


def fit_power_law(sizes: Sequence[int], values: Sequence[float]) -> float | None:
    """Exponent b of value ~ a * size^b (least squares on log-log)."""
    pairs = [(s, v) for s, v in zip(sizes, values, strict=True) if v and v > 0]
    if len(pairs) < 2:
        return None
    x, y = np.log([p[0] for p in pairs]), np.log([p[1] for p in pairs])
    return round(float(np.polyfit(x, y, 1)[0]), 3)


def scale_benchmark(settings: Settings, sizes: Sequence[int], out: str | Path, images: str | Path | None = None,
                    progress: Callable[[int], None] | None = None, seed: int = 0) -> dict[str, Any]:
    from . import services
    from .benchmark import machine
    from .pipeline import Engine

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = Path(tempfile.mkdtemp(prefix="ndid-scale-"))
    port = 29000 + os.getpid() % 500
    local = settings.replace(state_dir=str(state), milvus_collection_prefix="scale")
    services.start_milvus(local, port=port)
    local = local.replace(milvus_uri=services.milvus_server_uri(port))
    pid = services.read_pid(local, "milvus") or 0
    if images:  # the DAG path reads and writes S3: a SeaweedFS of its own
        s3_port = next(p for p in range(29600, 29900, 10) if not any(
            services.port_in_use("127.0.0.1", q + d) for q in services.weed_ports(p).values() for d in (0, 10000)))
        local = local.replace(s3_endpoint_url=f"http://127.0.0.1:{s3_port}", s3_bucket="scale")
        services.start_s3(local)
        access, secret = services.ensure_local_credentials(local)
        local = local.replace(s3_access_key=access, s3_secret_key=secret)
    rng = np.random.default_rng(seed)
    report: dict[str, Any] = {"machine": machine(), "sizes": [], "weights_mode": settings.weights_mode,
                              "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        with Engine(local) as engine:  # the collection (name, dimensions) ingest itself writes
            index = engine.index
            dim, raw_dim = engine.resnet.dim, engine.resnet.raw_dim
        index = ImageIndex(local, index.images, dim, raw_dim=raw_dim)
        have = 0
        for size in sorted(sizes):
            t0 = time.perf_counter()
            while have < size:
                step = min(UPSERT_BATCH, size - have)
                index.upsert(synthetic_rows(have, step, dim, raw_dim, rng), now_ms=1)
                have += step
                if progress:
                    progress(step)
            upsert_s = time.perf_counter() - t0
            settle_s = wait_for_index(index)
            queries = near_copies(index, QUERIES, rng)
            lat = search_latencies(index, queries, local, batch=64)
            single = search_latencies(index, queries[:SINGLE_QUERIES], local)
            point = {"rows": have, "upsert_rows_per_s": round((size - (report["sizes"][-1]["rows"] if report["sizes"]
                                                                       else 0)) / upsert_s, 1),
                     "index_settle_s": round(settle_s, 1),
                     "search_ms_p50": round(1000 * float(np.percentile(lat, 50)), 2),
                     "search_ms_p95": round(1000 * float(np.percentile(lat, 95)), 2),
                     "single_query_ms_p50": round(1000 * float(np.percentile(single, 50)), 1),
                     "server_rss_mb": round(rss_mb(pid), 1),
                     "disk_bytes_per_image": round(dir_bytes(services.milvus_data_dir(local)) / have),
                     "searched_vector_bytes_per_image": 4 * (dim + 64)}
            if images:
                point["dag_path_images_per_s"] = dag_path_throughput(local, index, images, have)
            report["sizes"].append(point)
            log.info("scale: %s", point)
            (out / "scale.json").write_text(json.dumps(report, indent=2))
        pts = report["sizes"]
        report["growth_exponents"] = {
            key: fit_power_law([p["rows"] for p in pts], [p.get(key) or 0 for p in pts])
            for key in ("search_ms_p50", "search_ms_p95", "single_query_ms_p50", "server_rss_mb", "disk_bytes_per_image",
                        "upsert_rows_per_s", "dag_path_images_per_s") if any(key in p for p in pts)}
        (out / "scale.json").write_text(json.dumps(report, indent=2))
        plot(report, out / "scale.png")
        (out / "scale.md").write_text(markdown(report))
        return report
    finally:
        services.services_down(local)
        shutil.rmtree(state, ignore_errors=True)


def dag_path_throughput(settings: Settings, index: ImageIndex, images: str | Path, size: int) -> float:
    """embed -> index -> decide of up to 64 real photos, each step in a fresh engine (as each Airflow
    task is a fresh process: nothing cached), against the index at this size, in images/s."""
    from datetime import UTC, datetime, timedelta

    from . import ingest_run
    from .storage import S3Store

    files = sorted(p for p in Path(images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:64]
    store = S3Store(settings)
    store.ensure_bucket()
    prefix = f"images/at-{size}/"
    for f in files:
        store.put_bytes(prefix + f.name, f.read_bytes())
    start, end = datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=1)
    run = f"scale-{size}"
    outline = ingest_run.plan(settings, settings.s3_bucket, prefix, start, end, 64, True, run)
    work_s = 0.0
    for step in ("embed", "index", "decide"):
        with ingest_run.run_engine(settings) as engine:
            engine.warm_up()  # model build and index open: per-process start-up, not per image
            t0 = time.perf_counter()
            for part in outline["slices"]:
                if step == "embed":
                    ingest_run.embed(engine, part, run, end.isoformat())
                elif step == "index":
                    ingest_run.index(engine, part, run)
                else:
                    ingest_run.decide(engine, part, run, end.isoformat())
            work_s += time.perf_counter() - t0
    return round(len(files) / work_s, 2)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = report["sizes"]
    rows = [p["rows"] for p in pts]
    panels = [("search_ms_p50", "search p50 (ms/image)"), ("single_query_ms_p50", "one query alone (ms)"),
              ("server_rss_mb", "Milvus RSS (MB)"), ("disk_bytes_per_image", "disk bytes / image"),
              ("upsert_rows_per_s", "upsert rows/s"), ("dag_path_images_per_s", "DAG path images/s")]
    panels = [p for p in panels if any(p[0] in x for x in pts)]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0))
    for ax, (key, label) in zip(np.atleast_1d(axes), panels, strict=True):
        ax.loglog(rows, [p.get(key) for p in pts], "o-")
        slope = report["growth_exponents"].get(key)
        ax.set_title(f"{label}\n~ N^{slope}" if slope is not None else label, fontsize=9)
        ax.set_xlabel("indexed images")
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(report: dict[str, Any]) -> str:
    pts = report["sizes"]
    keys = [k for k in ("upsert_rows_per_s", "index_settle_s", "search_ms_p50", "search_ms_p95",
                        "single_query_ms_p50", "server_rss_mb",
                        "disk_bytes_per_image", "searched_vector_bytes_per_image", "dag_path_images_per_s")
            if any(k in p for p in pts)]
    lines = [f"machine: {report['machine']['cpu']} ({report['machine']['cores']} cores)", "",
             "| rows | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    lines += [f"| {p['rows']:,} | " + " | ".join(str(p.get(k, "")) for k in keys) + " |" for p in pts]
    lines += ["", "growth exponents (value ~ N^b): " + ", ".join(f"{k} {v}" for k, v in
                                                                  report["growth_exponents"].items())]
    return "\n".join(lines) + "\n"
