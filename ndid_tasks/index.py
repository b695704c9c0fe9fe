"""The Milvus index: one row per image (metadata + pHash + ResNet) and a lazy CLIP collection.

Same code for an embedded Milvus Lite file, ``milvus-lite server`` and a real Milvus cluster: only
the URI differs. Primary keys are stable image ids (S3 URI or content id), ``auto_id=False``, so
upserting the same image twice leaves one row. Ingestion order is ``(created_at, id)``; every
candidate search is restricted to images strictly before the query image in that order, which
makes decisions independent of how a run was split into batches or re-run.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pymilvus import DataType, MilvusClient

from .config import Settings

log = logging.getLogger(__name__)


class _LiteUnimplementedFilter(logging.Filter):
    """Embedded Milvus Lite answers pymilvus' optional AllocTimestamp RPC with "not implemented";
    pymilvus falls back, but grpc logs a full traceback at ERROR for every upsert."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Method not implemented" not in record.getMessage()


logging.getLogger("grpc._server").addFilter(_LiteUnimplementedFilter())

MAX_ID_LENGTH = 1024
QUERY_CHUNK = 256
# Decision fields that a re-upsert of the same image must not wipe out.
KEPT_FIELDS = ("ingested_at", "decision", "matched_id", "original_id", "run_id")
HNSW_BUILD = {"M": 16, "efConstruction": 200}


@dataclass
class IndexedImage:
    id: str
    sha256: str
    source: str
    width: int
    height: int
    num_bytes: int
    created_at: int  # ms since epoch: when the object appeared (S3 LastModified, file mtime)
    phash: np.ndarray
    resnet: np.ndarray
    ingested_at: int = 0
    decision: str = ""
    matched_id: str = ""
    original_id: str = ""
    run_id: str = ""
    raw: np.ndarray | None = None  # the un-whitened descriptor, kept so the index can be re-whitened
    words: dict[int, float] | None = None  # visual words (sparse tf-idf), None: not computed
    views: np.ndarray | None = None  # (<= len(PHashSignal.VIEWS), 64) pHash of each other view (quarters, untrimmed, halves), not indexed
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self, weights_mode: str, inline_raw: bool = False) -> dict[str, Any]:
        return {"id": self.id, "sha256": self.sha256, "source": self.source[:2048],
                "width": int(self.width), "height": int(self.height), "num_bytes": int(self.num_bytes),
                "created_at": int(self.created_at), "ingested_at": int(self.ingested_at),
                "decision": self.decision, "matched_id": self.matched_id, "original_id": self.original_id,
                "run_id": self.run_id, "weights_mode": weights_mode,
                "phash": np.asarray(self.phash, dtype=np.float32).tolist(),
                "resnet": np.asarray(self.resnet, dtype=np.float32).tolist(),
                **({"resnet_raw": [] if self.raw is None else np.asarray(self.raw, dtype=np.float32).tolist()}
                   if inline_raw else {})}


@dataclass
class Hit:
    id: str
    created_at: int
    score: float  # Hamming distance for pHash hits, cosine for ResNet and visual-words hits


LITE_MEMTABLE_ENV = "MILVUS_LITE_MEMTABLE_MEMORY_LIMIT_BYTES"


def lite_environment(settings: Settings) -> dict[str, str]:
    """Environment for a Milvus Lite engine (embedded or ``milvus-lite server``). Lite copies every
    memtable row into Python lists and brute-forces it on each search; its default 128 MB memtable
    (~80 k of our rows) made one search call 3.6-4 s at 50-100 k rows, an 8 MB one 0.4-1.5 s. A
    value already in the environment wins."""
    return {LITE_MEMTABLE_ENV: os.environ.get(LITE_MEMTABLE_ENV, str(settings.milvus_lite_memtable_mb << 20))}


def placeholder_vector(dim: int) -> np.ndarray:
    """The ResNet vector of error rows (they are never searched; Milvus needs a valid vector)."""
    return np.eye(1, dim, 0, dtype=np.float32)[0]


def _quote(value: str) -> str:
    """A Milvus string literal: quotes, backslashes and control characters (newlines are legal in
    S3 keys) escaped as in JSON."""
    return json.dumps(value, ensure_ascii=False)


SEARCHABLE = 'decision != "error"'  # error rows only record that an object was seen


def before_filter(created_at: int | None, image_id: str | None) -> str:
    """Milvus filter: searchable rows strictly earlier than (created_at, id) in ingestion order."""
    if created_at is None:
        return SEARCHABLE
    t = int(created_at)
    return f"{SEARCHABLE} and ((created_at < {t}) or (created_at == {t} and id < {_quote(image_id or '')}))"


def ids_filter(ids: Iterable[str]) -> str:
    return "id in [" + ", ".join(_quote(i) for i in ids) + "]"


def sparse_rows(vectors: Sequence[dict[int, float]]) -> list:
    """Sparse vectors ({index: weight}) as one-row SciPy CSR matrices, a form pymilvus takes
    without checking a list of dicts pair by pair in Python (~5 % of an ingest's time went there);
    the bytes sent are the same (float32 weights, indices in ascending order)."""
    from scipy.sparse import csr_matrix

    lengths = [len(v) for v in vectors]
    pairs = [sorted(v.items()) for v in vectors]
    indices = np.fromiter((w for row in pairs for w, _ in row), np.int64, sum(lengths))
    weights = np.fromiter((x for row in pairs for _, x in row), np.float32, sum(lengths))
    dim = int(indices.max()) + 1 if len(indices) else 1
    matrix = csr_matrix((weights, indices, np.cumsum([0, *lengths])), shape=(len(vectors), dim))
    return [matrix[n] for n in range(len(vectors))]


class ImageIndex:
    """``images`` is the versioned collection (see :meth:`Settings.images_collection`);
    ``resnet_dim`` the length of the (whitened) ResNet vectors it holds; ``words`` the collection of
    visual words ("" = none, see :mod:`ndid_tasks.signals.visual_words`)."""

    def __init__(self, settings: Settings, images: str, resnet_dim: int, client: MilvusClient | None = None,
                 raw_dim: int = 0, words: str = "") -> None:
        self.settings = settings
        self.uri = settings.resolved_milvus_uri
        self.images = images
        self.resnet_dim = resnet_dim
        self.clip = settings.clip_collection
        # raw descriptors live in their own collection, released (on disk, not in memory); an images
        # collection made before that keeps them inline in ``resnet_raw`` (``inline_raw``)
        self.raw = settings.raw_collection
        self.raw_dim = raw_dim
        self.inline_raw = False
        self.words = words
        self._words_unsealed = 0  # words rows this client wrote since it last sealed (see seal_words)
        if client is None:
            # pymilvus' 10 s keepalive pings get long calls dropped ("too_many_pings"), for a
            # server and for the embedded Lite file alike (it is served over local gRPC too)
            kwargs: dict[str, Any] = {"uri": self.uri, "grpc_options": {"grpc.keepalive_time_ms": 3_600_000}}
            if settings.milvus_token:
                kwargs["token"] = settings.milvus_token
            if not self.uri.startswith(("http://", "https://", "tcp://")):
                from pathlib import Path

                Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
                # the embedded engine reads it once, when pymilvus first imports it
                os.environ.update(lite_environment(settings))
            client = MilvusClient(**kwargs)
        self.client = client
        self.ensure_collections()

    def close(self) -> None:
        self.client.close()

    # ------------------------------------------------------------ schema
    def ensure_collections(self) -> None:
        """Create both collections if missing and make sure they are loaded (safe to call any
        number of times; after a Milvus restart existing collections come back released)."""
        existing = set(self.client.list_collections())
        for name in (self.images, self.clip, self.words):
            if name and name in existing:
                self._load(name)
        if self.images in existing:
            fields = {f["name"] for f in self.client.describe_collection(self.images)["fields"]}
            self.inline_raw = "resnet_raw" in fields
        if self.raw_dim and self.raw not in existing:
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                                description="NDID raw ResNet descriptors (for re-whitening)")
            schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID_LENGTH)
            schema.add_field("raw", DataType.FLOAT_VECTOR, dim=self.raw_dim)
            params = self.client.prepare_index_params()
            params.add_index(field_name="raw", index_type="FLAT", metric_type="L2")  # never searched
            self._create(self.raw, schema, params)
            self.client.release_collection(self.raw)
        if self.images not in existing:
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                                description="NDID images: metadata, pHash, ResNet-50")
            schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID_LENGTH)
            schema.add_field("sha256", DataType.VARCHAR, max_length=64)
            schema.add_field("source", DataType.VARCHAR, max_length=2048)
            schema.add_field("width", DataType.INT32)
            schema.add_field("height", DataType.INT32)
            schema.add_field("num_bytes", DataType.INT64)
            schema.add_field("created_at", DataType.INT64)
            schema.add_field("ingested_at", DataType.INT64)
            schema.add_field("decision", DataType.VARCHAR, max_length=16)
            schema.add_field("matched_id", DataType.VARCHAR, max_length=MAX_ID_LENGTH)
            schema.add_field("original_id", DataType.VARCHAR, max_length=MAX_ID_LENGTH)
            schema.add_field("run_id", DataType.VARCHAR, max_length=256)
            schema.add_field("weights_mode", DataType.VARCHAR, max_length=16)
            schema.add_field("phash", DataType.FLOAT_VECTOR, dim=64)
            schema.add_field("resnet", DataType.FLOAT_VECTOR, dim=self.resnet_dim)
            params = self.client.prepare_index_params()
            # 0/1 floats with L2: squared distance == Hamming distance. HNSW, not FLAT: Milvus Lite's
            # FLAT L2 materialises (queries x rows x 64) differences -- 75 % of a 64-image batch
            # search at 100 k rows (see docs/benchmarks.md)
            params.add_index(field_name="phash", index_type="HNSW", metric_type="L2", params=HNSW_BUILD)
            params.add_index(field_name="resnet", index_type="HNSW", metric_type="COSINE", params=HNSW_BUILD)
            self._create(self.images, schema, params)
            log.info("created Milvus collection %s at %s", self.images, self.uri)
        if self.clip not in existing:
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                                description="NDID CLIP vectors, computed lazily")
            schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID_LENGTH)
            schema.add_field("clip", DataType.FLOAT_VECTOR, dim=512)
            params = self.client.prepare_index_params()
            params.add_index(field_name="clip", index_type="HNSW", metric_type="COSINE", params=HNSW_BUILD)
            self._create(self.clip, schema, params)

        if self.words and self.words not in existing:
            # its own collection: images collections made before it stay usable, and its rows depend
            # on the vocabulary only (not on the encoders' whitening). Only searchable images have a row.
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                                description="NDID visual words (sparse tf-idf of SIFT)")
            schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID_LENGTH)
            schema.add_field("created_at", DataType.INT64)
            schema.add_field("words", DataType.SPARSE_FLOAT_VECTOR)
            params = self.client.prepare_index_params()
            params.add_index(field_name="words", index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
            self._create(self.words, schema, params)

    # how long a process that meets a collection another process is creating waits for it
    CREATE_RACE_WAIT_S = 30.0

    def _create(self, name: str, schema: Any, params: Any) -> None:
        """Create a collection; another process creating it at the same moment is fine: the loser's
        create fails ("already exist" from a server, "[Errno 17] File exists" from Lite) and it goes
        on with the winner's collection (:meth:`_load`)."""
        from pymilvus import MilvusException

        try:
            self.client.create_collection(name, schema=schema, index_params=params, consistency_level="Strong")
        except MilvusException as exc:
            self._load(name, exc)

    def _load(self, name: str, failed: Exception | None = None) -> None:
        """Load a collection. One that another process is creating is listed only once registered,
        and loads only once indexed (a create is three calls), so this retries for a while and
        then gives up with the last error (``failed``: why the caller expected a wait)."""
        from pymilvus import MilvusException

        deadline = time.monotonic() + self.CREATE_RACE_WAIT_S
        while True:
            try:
                if self.client.has_collection(name):
                    self.client.load_collection(name)
                    return
            except MilvusException as exc:
                failed = exc
            if time.monotonic() >= deadline:
                raise failed or MilvusException(message=f"collection {name} did not appear")
            time.sleep(0.2)

    # ------------------------------------------------------------ writes
    def upsert(self, images: Sequence[IndexedImage], now_ms: int) -> None:
        """Insert or refresh rows; keeps first ingestion time and earlier decisions of known ids."""
        if not images:
            return
        known = self.get_rows([im.id for im in images], list(KEPT_FIELDS))
        rows = []
        for im in images:
            old = known.get(im.id)
            if old:
                for name in KEPT_FIELDS:
                    if not getattr(im, name):
                        setattr(im, name, old[name])
            if not im.ingested_at:
                im.ingested_at = now_ms
            rows.append(im.row(self.settings.weights_mode, inline_raw=self.inline_raw))
        self.client.upsert(self.images, rows)
        if not self.inline_raw:
            self.upsert_raw({im.id: im.raw for im in images if im.raw is not None})
        self.upsert_words({im.id: (int(im.created_at), im.words) for im in images if im.words})

    def upsert_words(self, words: dict[str, tuple[int, dict[int, float]]]) -> None:
        """Visual words by id, with the image's created_at (searches filter on it); an image without
        keypoints has none and gets no row."""
        kept = [(k, created_at, vector) for k, (created_at, vector) in words.items() if vector]
        if self.words and kept:
            vectors = sparse_rows([vector for _, _, vector in kept])
            self.client.upsert(self.words, [{"id": k, "created_at": created_at, "words": vector}
                                            for (k, created_at, _), vector in zip(kept, vectors, strict=True)])
            self._words_unsealed += len(kept)
            if self._words_unsealed >= self.WORDS_SEAL_ROWS:
                self.seal_words()

    # a long run on Lite seals the words every this many rows it wrote (see seal_words)
    WORDS_SEAL_ROWS = 1024

    def seal_words(self) -> bool:
        """On Milvus Lite, seal the words collection's memtable into an indexed segment (True if
        done). Lite brute-forces memtable rows in Python on every call, ~0.4 ms a row whatever the
        number of queries: one query alone paid ~70 ms at 162 rows (~1 s at 2,000), ~4 ms once sealed
        (the same hits: its sparse index is exact). Done at the end of an ingest run and every
        :attr:`WORDS_SEAL_ROWS` words rows within one (a 4,096-image run's words searches: 66 -> 41 s),
        not after every batch: every call leaves a segment, and Milvus advises flushing rarely. A
        Milvus server seals and indexes on its own."""
        if not self.words or not self.is_lite:
            return False
        self.client.flush(self.words)
        self._words_unsealed = 0
        return True

    def upsert_raw(self, raws: dict[str, np.ndarray]) -> None:
        """Raw descriptors into their (released) collection: kept for re-whitening, never loaded."""
        if raws and self.raw_dim:
            self.client.upsert(self.raw, [{"id": k, "raw": np.asarray(v, np.float32).tolist()}
                                          for k, v in raws.items()])

    def get_raw(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Raw descriptors of these ids; the raw collection must be loaded (iter_rows loads it for
        the length of a re-index)."""
        return {r["id"]: np.asarray(r["raw"], dtype=np.float32) for r in self._by_ids(self.raw, ids, ["raw"])}

    def set_decisions(self, updates: Sequence[dict[str, Any]]) -> None:
        """Partial update of decision fields: dicts with id, decision, matched_id, original_id, run_id."""
        if updates:
            self.client.upsert(self.images, [dict(u) for u in updates], partial_update=True)

    def upsert_clip(self, vectors: dict[str, np.ndarray]) -> None:
        if vectors:
            self.client.upsert(self.clip, [{"id": k, "clip": np.asarray(v, np.float32).tolist()}
                                           for k, v in vectors.items()])

    def delete(self, ids: Sequence[str]) -> None:
        if ids:
            self.client.delete(self.images, ids=list(ids))
            self.client.delete(self.clip, ids=list(ids))
            if self.words:
                self.client.delete(self.words, ids=list(ids))
            if self.raw_dim and self.raw in self.client.list_collections():
                self.client.delete(self.raw, ids=list(ids))

    # ------------------------------------------------------------ reads
    def _by_ids(self, collection: str, ids: Sequence[str], fields: list[str]) -> Iterable[dict[str, Any]]:
        """Rows of ``collection`` with these primary keys, a few hundred ids a query."""
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), QUERY_CHUNK):
            chunk = unique[start:start + QUERY_CHUNK]
            yield from self.client.query(collection, filter=ids_filter(chunk), output_fields=["id", *fields])

    def get_rows(self, ids: Sequence[str], fields: list[str]) -> dict[str, dict[str, Any]]:
        return {row["id"]: row for row in self._by_ids(self.images, ids, fields)}

    def group(self, original_id: str, limit: int = 200) -> list[dict[str, Any]]:
        """The original and every image decided a duplicate of it (oldest first, at most ``limit``)."""
        flt = f"id == {_quote(original_id)} or original_id == {_quote(original_id)}"
        rows = self.client.query(self.images, filter=flt, limit=limit,
                                 output_fields=["id", "source", "decision", "matched_id", "original_id", "created_at"])
        return sorted(rows, key=lambda r: (r["created_at"], r["id"]))

    def sample(self, size: int, fields: list[str], total: int | None = None) -> list[dict[str, Any]]:
        """About ``size`` of the index's images drawn uniformly and reproducibly (error rows left
        out): those whose content hash sorts below a cut scaled to the index size (every image
        where it holds fewer; ``total``: its :meth:`count`, where the caller has it). A filter on
        the stored sha256, so any process draws the same sample of the same index, with no state kept."""
        total = self.count() if total is None else total
        if total <= size:
            flt = SEARCHABLE
        else:
            flt = f'{SEARCHABLE} and sha256 < "{int(16 ** 8 * size / total):08x}"'  # (hex digits: uniform)
        return self.client.query(self.images, filter=flt, limit=16 * size + 1024,  # (cut at ~size +- sqrt)
                                 output_fields=["id", *fields])

    def get_clip(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        return {r["id"]: np.asarray(r["clip"], dtype=np.float32) for r in self._by_ids(self.clip, ids, ["clip"])}

    def get_words(self, ids: Sequence[str]) -> dict[str, dict[int, float]]:
        """Stored visual words ({} where the index keeps none)."""
        if not self.words:
            return {}
        return {r["id"]: {int(k): float(v) for k, v in r["words"].items()}
                for r in self._by_ids(self.words, ids, ["words"])}

    def ids_with_words(self, ids: Sequence[str]) -> set[str]:
        """Which of these ids have a visual-words row (without reading the vectors)."""
        return {r["id"] for r in self._by_ids(self.words, ids, [])} if self.words else set()

    def iter_rows(self, fields: list[str], batch_size: int = 512) -> Iterable[list[dict[str, Any]]]:
        """Every row, in pages: the input of a re-index. ``resnet_raw`` among the fields is read from
        the raw collection (loaded for the iteration, released after) unless the rows hold it."""
        want_raw = "resnet_raw" in fields and not self.inline_raw
        own = [f for f in fields if not (want_raw and f == "resnet_raw")]
        it = self.client.query_iterator(self.images, batch_size=batch_size, filter="", output_fields=["id", *own])
        if want_raw:
            self.client.load_collection(self.raw)
        try:
            while True:
                page = it.next()
                if not page:
                    return
                if want_raw:
                    raws = self.get_raw([r["id"] for r in page])
                    for row in page:
                        row["resnet_raw"] = raws[row["id"]].tolist() if row["id"] in raws else []
                yield page
        finally:
            it.close()
            if want_raw:
                self.client.release_collection(self.raw)

    def point_alias(self, alias: str) -> str | None:
        """Make ``alias`` name this index's collection; returns the collection it named before."""
        before = None
        if alias in (self.client.list_aliases().get("aliases") or []):
            before = self.client.describe_alias(alias).get("collection_name")
        if before is None:
            self.client.create_alias(self.images, alias)
        elif before != self.images:
            self.client.alter_alias(self.images, alias)
        return before

    def count(self, collection: str = "") -> int:
        res = self.client.query(collection or self.images, filter="", output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    @functools.cached_property
    def is_lite(self) -> bool:
        """Milvus Lite (a file or `milvus-lite server`), whose searches are partly Python scans."""
        return "lite" in str(self.client.get_server_version()).lower()

    def earliest_with_sha256(self, sha256: str, created_at: int, image_id: str) -> str | None:
        rows = self.client.query(self.images, filter=f"sha256 == {_quote(sha256)} and {before_filter(created_at, image_id)}",
                                 output_fields=["id", "created_at"])
        if not rows:
            return None
        return min(rows, key=lambda r: (r["created_at"], r["id"]))["id"]

    def earliest_with_sha256_many(self, images: Sequence[IndexedImage]) -> dict[str, str | None]:
        """:meth:`earliest_with_sha256` for many images with one query per chunk."""
        out: dict[str, str | None] = {im.id: None for im in images}
        hashes = list(dict.fromkeys(im.sha256 for im in images if im.sha256))
        rows: list[dict[str, Any]] = []
        latest = max((im.created_at for im in images), default=0)
        for start in range(0, len(hashes), QUERY_CHUNK):
            chunk = hashes[start:start + QUERY_CHUNK]
            rows += self.client.query(self.images, filter=f"sha256 in [{', '.join(_quote(h) for h in chunk)}] and "
                                                          f"{SEARCHABLE} and created_at <= {int(latest)}",
                                      output_fields=["id", "created_at", "sha256"])
        by_hash: dict[str, list[tuple[int, str]]] = {}
        for r in rows:
            by_hash.setdefault(r["sha256"], []).append((r["created_at"], r["id"]))
        for im in images:
            earlier = [k for k in by_hash.get(im.sha256, []) if k < (im.created_at, im.id)]
            out[im.id] = min(earlier)[1] if earlier else None
        return out

    def search_many(self, field: str, vectors: Sequence[np.ndarray], limit: int,
                    latest_created_at: int | None = None, radius: float | None = None) -> list[list[Hit]]:
        """One search call for many query vectors (``field`` is "phash", "resnet" or "words").

        pHash: the nearest ``limit`` within Hamming distance ``radius`` (squared L2 of 0/1
        vectors). Asked as a top-k search and cut at the radius here: Milvus Lite's range search
        took 3-4x longer (1.3 s for 64 queries), and its cost grows with ``limit`` (~80 us a hit),
        so callers ask for few. ResNet: top-``limit`` by cosine with ef from the settings.
        Words: top-``limit`` by inner product of the sparse vectors (their own collection).
        ``latest_created_at`` limits hits to rows not newer than the newest query; callers
        post-filter the exact ingestion order.
        """
        if not vectors:
            return []
        if field == "words":
            flt = "" if latest_created_at is None else f"created_at <= {int(latest_created_at)}"
            res = self.client.search(self.words, data=sparse_rows(vectors),  # type: ignore[arg-type]  # words: dicts
                                     anns_field="words", limit=limit, filter=flt,
                                     output_fields=["created_at"], search_params={"metric_type": "IP"})
            return [[Hit(h["id"], h["entity"]["created_at"], float(h["distance"])) for h in hits] for hits in res]
        flt = SEARCHABLE if latest_created_at is None else f"{SEARCHABLE} and created_at <= {int(latest_created_at)}"
        params = {"metric_type": "L2" if field == "phash" else "COSINE",
                  "params": {"ef": max(self.settings.milvus_hnsw_ef, limit)}}  # (a FLAT index ignores ef)
        res = self.client.search(self.images, data=[np.asarray(v, np.float32).tolist() for v in vectors],
                                 anns_field=field, limit=limit, filter=flt, output_fields=["created_at"],
                                 search_params=params)
        if field == "phash":
            res = [[h for h in hits if h["distance"] <= (radius or 0) + 0.5] for hits in res]
        return [[Hit(h["id"], h["entity"]["created_at"], float(h["distance"])) for h in hits] for hits in res]
