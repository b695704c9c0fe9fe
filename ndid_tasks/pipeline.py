"""The functions the CLI and the DAG tasks call: load -> signals -> index -> decide -> records.

Every object that enters a run leaves with exactly one record (a decision or an error). Record ids
and index keys are stable, so running the same work again rewrites the same records.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any, Self

import numpy as np
from PIL import Image

from .calibration import OPTIONAL_STAGE2, Calibration, CalibrationError, default_calibration, load_calibration_file
from .config import Settings
from .decide import BackgroundSample, DecisionRecord, Matcher
from .feature_store import FeatureStore
from .images import WORKING_SIZE, ImageDecodeError, LoadedImage, load_image
from .index import MAX_ID_LENGTH, ImageIndex, IndexedImage
from .signals import ClipSignal, GeometricSignal, GlobalDescriptorSignal, PDQSignal, PHashSignal, descriptor_signal
from .signals.visual_words import VisualWordsSignal, Vocabulary, load_generic, pack_words, unpack_words
from .whitening import Whitening, WhiteningError, load_whitening_file, packaged_whitening

log = logging.getLogger(__name__)

# the index fields an IndexedImage is rebuilt from (see Engine._decide_earlier)
IMAGE_ROW_FIELDS = ("id", "sha256", "source", "width", "height", "num_bytes", "created_at", "phash", "resnet")
LOCAL_FEATURE_CACHE = 2048  # images whose SIFT features stay in memory (~130 KB each as uint8)
SEARCH_BATCH = 64  # query vectors per Milvus search call
FETCH_AHEAD = 8  # objects being read while one is decoded (S3's connection pool holds 10)


@dataclass(frozen=True)
class SourceItem:
    """One object to ingest: a stable id, where to read it, and when it appeared."""

    id: str
    source: str  # s3://bucket/key or a local path
    created_at_ms: int
    size: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.source, "created_at_ms": self.created_at_ms, "size": self.size}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SourceItem:
        return cls(d["id"], d["source"], int(d["created_at_ms"]), int(d.get("size", 0)))


@dataclass
class Prepared:
    """A batch after decoding and signals: index rows for good images, records for bad ones."""

    images: list[IndexedImage]
    errors: list[DecisionRecord]
    loaded: dict[str, LoadedImage] = field(default_factory=dict)  # kept in-process for CLIP


def iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def local_items(paths: Iterable[str | Path]) -> list[SourceItem]:
    """Files and folders (recursively) as SourceItems; id = file:// + absolute path."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
        elif p.exists():
            files.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    items = []
    for f in files:
        st = f.stat()
        items.append(SourceItem(f"file://{f.resolve()}", str(f.resolve()), int(st.st_mtime * 1000), st.st_size))
    return sorted(items, key=lambda i: (i.created_at_ms, i.id))


class BoundedDict(OrderedDict):
    """A dict that forgets its oldest entries beyond ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        while len(self) > self.limit:
            self.popitem(last=False)


class FeatureCache:
    """What stage 2 needs of recent images, per signal, each under the same bound (the oldest
    leave first): SIFT features (~130 KB an image), PDQ dihedral hashes, CLIP vectors."""

    def __init__(self, limit: int = LOCAL_FEATURE_CACHE) -> None:
        self.local: BoundedDict = BoundedDict(limit)
        self.pdq: BoundedDict = BoundedDict(limit)
        self.clip: BoundedDict = BoundedDict(limit)

    def forget(self, ids: Sequence[str]) -> None:
        for cache in (self.local, self.pdq, self.clip):
            for image_id in ids:
                cache.pop(image_id, None)


class Engine:
    """Signals, index and calibration for one process; heavy parts are built on first use."""

    def __init__(self, settings: Settings, calibration: Calibration | None = None,
                 index: ImageIndex | None = None, whitening: Whitening | None = None,
                 feature_store: FeatureStore | None = None) -> None:
        """``calibration`` and ``whitening`` given together replace the active ones (benchmarks, tests);
        with a ``feature_store``, verification features are stored at ingest and read back from it."""
        self.settings = settings
        self.feature_store = feature_store
        self._whitening = whitening
        self.phash = PHashSignal()
        self._resnet: GlobalDescriptorSignal | None = None
        self.clip = ClipSignal(settings)
        self.geometry = GeometricSignal.from_settings(settings)
        self.pdq = PDQSignal()
        self._words: VisualWordsSignal | None = None
        self._words_limit_logged = False
        self.features = FeatureCache()  # stage-2 inputs of recent images
        self._index = index
        self._calibration = calibration
        self._s3: dict[str, Any] = {}
        self._s3_lock = threading.Lock()
        self.background_sample = BackgroundSample()  # the words background's sample, kept across queries
        self._loaded: dict[str, LoadedImage] = {}
        self._full: BoundedDict = BoundedDict(8)  # full-resolution pictures of recent closer looks
        self._faint: BoundedDict = BoundedDict(64)  # faint-contrast SIFT of recent faint looks
        # images that are not indexed (queries): where to re-read them, or their bytes
        self.sources: dict[str, str | bytes] = {}
        self.clip_images_computed = 0
        self.full_pictures_read = 0
        self.timings: defaultdict[str, float] = defaultdict(float)  # seconds per stage

    # ---------------------------------------------------------------- parts
    @property
    def resnet(self) -> GlobalDescriptorSignal:
        """The global descriptor (NDID_DESCRIPTOR) with the whitening that the active calibration names."""
        if self._resnet is None:
            from .weights import require_descriptor_weights

            require_descriptor_weights(self.settings)  # the first thing to fix, so say it first
            whitening = self._whitening or resolve_whitening(self.settings, self.calibration)
            if self._whitening is not None and self._whitening.version != self.calibration.whitening_version:
                raise WhiteningError(f"whitening {self._whitening.version} given with calibration "
                                     f"{self.calibration.version}, which was fitted with {self.calibration.whitening_version}")
            self._resnet = descriptor_signal(self.settings, whitening=whitening)
        return self._resnet

    @property
    def words(self) -> VisualWordsSignal | None:
        """Visual words (NDID_VISUAL_WORDS), on the geometric signal's SIFT features; None when off."""
        if self._words is None and self.settings.visual_words:
            vocabulary = Vocabulary.load(self.settings.visual_words_file)
            generic = self.settings.visual_words_generic_file
            self._words = VisualWordsSignal(vocabulary, self.geometry,
                                            [] if generic == "none" else load_generic(vocabulary, generic))
        return self._words

    def words_of(self, pics: Sequence[LoadedImage]) -> list[dict[int, float] | None]:
        """Each image's visual words from its SIFT features (computed once, kept for stage 2)."""
        if self.words is None or not pics:
            return [None] * len(pics)
        local = self.local_features([p.image_id for p in pics], pictures={p.image_id: p for p in pics})
        t0 = time.perf_counter()
        found = [p.image_id for p in pics if p.image_id in local]
        words = dict(zip(found, self.words.from_local_many([local[i] for i in found]), strict=True))
        out = [words.get(p.image_id) for p in pics]
        self.timings["words_s"] += time.perf_counter() - t0
        return out

    @property
    def index_version(self) -> str:
        """What the images collection is named after: the whitening (or the raw descriptor)."""
        w = self.resnet.whitening
        if w is not None:
            return w.version
        import hashlib

        return "raw-" + hashlib.sha256(self.settings.descriptor_name.encode()).hexdigest()[:8]

    @property
    def index(self) -> ImageIndex:
        if self._index is None:
            words = self.settings.words_collection(self.words.vocabulary.version) if self.words else ""
            self._index = ImageIndex(self.settings, self.settings.images_collection(self.index_version),
                                     self.resnet.dim, raw_dim=self.resnet.raw_dim, words=words)
        return self._index

    @property
    def calibration(self) -> Calibration:
        if self._calibration is None:
            self._calibration = resolve_calibration(self.settings)
            if self._calibration.weights_mode != self.settings.weights_mode:
                raise CalibrationError(
                    f"calibration {self._calibration.version} was fitted for weights mode "
                    f"{self._calibration.weights_mode!r} but NDID_WEIGHTS_MODE={self.settings.weights_mode!r}; "
                    f"run `ndid calibrate --bootstrap DIR` with these weights")
        return self._calibration

    def warm_up(self) -> float:
        """Build the models and open the index now (seconds taken): ~2 s for ResNet-50 and ~2 s to
        start Milvus Lite, paid once per process -- kept out of throughput measurements."""
        t0 = time.perf_counter()
        self.resnet.model  # noqa: B018 - builds it
        self.index  # noqa: B018 - opens (or creates) the collection
        return time.perf_counter() - t0

    def s3(self, bucket: str):
        from .storage import S3Store

        with self._s3_lock:  # (objects are read from several threads, see fetched)
            if bucket not in self._s3:
                self._s3[bucket] = S3Store(self.settings, bucket=bucket)
            return self._s3[bucket]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None

    # ---------------------------------------------------------------- reading
    def read_bytes(self, source: str) -> bytes:
        if source.startswith("s3://"):
            from .storage import parse_s3_uri

            bucket, key = parse_s3_uri(source)
            return self.s3(bucket).get_bytes(key, max_bytes=self.settings.max_image_bytes + 1)
        path = Path(source)
        if path.stat().st_size > self.settings.max_image_bytes:
            raise ImageDecodeError("too_large", f"{path.stat().st_size} bytes exceeds the limit")
        return path.read_bytes()

    def fetched(self, items: Sequence[SourceItem]) -> Iterator[tuple[SourceItem, bytes | Exception]]:
        """Each item's bytes (or what reading it raised), in order, read FETCH_AHEAD at a time: an
        S3 GET waits on the network, not the CPU, so the next ones are on their way while this one
        is decoded. At most FETCH_AHEAD + 1 objects are held at once (each up to NDID_MAX_IMAGE_BYTES)."""
        def read(item: SourceItem) -> bytes | Exception:
            try:
                return self.read_bytes(item.source)
            except Exception as exc:  # noqa: BLE001 - sorted into records or re-raised by the caller, in order
                return exc

        if len(items) <= 1:
            yield from ((item, read(item)) for item in items)
            return
        with ThreadPoolExecutor(min(FETCH_AHEAD, len(items)), thread_name_prefix="ndid-fetch") as pool:
            ahead = iter(items)
            pending = deque((item, pool.submit(read, item)) for item in islice(ahead, FETCH_AHEAD))
            while pending:
                item, job = pending.popleft()
                following = next(ahead, None)
                if following is not None:
                    pending.append((following, pool.submit(read, following)))
                yield item, job.result()

    def load(self, item_id: str, data: bytes, working_size: int = WORKING_SIZE) -> LoadedImage:
        return load_image(data, item_id, max_pixels=self.settings.max_image_pixels,
                          max_bytes=self.settings.max_image_bytes, max_decode_bytes=self.settings.max_decode_bytes,
                          working_size=working_size)

    # ---------------------------------------------------------------- stages
    def prepare(self, items: Sequence[SourceItem], run_id: str = "", run_at: str = "") -> Prepared:
        """Fetch, decode and compute pHash + ResNet for a batch. Bad objects become error records."""
        t0 = time.perf_counter()
        loaded: list[tuple[SourceItem, LoadedImage]] = []
        errors: list[DecisionRecord] = []
        keyed = []
        for item in items:
            if len(item.id.encode()) > MAX_ID_LENGTH:  # cannot be a Milvus key: a record, not a failed batch
                errors.append(self.error_record(item, "key_too_long", f"id of {len(item.id.encode())} bytes exceeds "
                                                f"the index's {MAX_ID_LENGTH}-byte key", run_id, run_at))
            else:
                keyed.append(item)
        for item, data in self.fetched(keyed):
            if isinstance(data, Exception):
                from .storage import StorageError

                if isinstance(data, (FileNotFoundError, PermissionError, IsADirectoryError, StorageError)) \
                        or _is_client_error(data):
                    reason = "too_large" if "limit" in str(data) else "unreadable"
                    errors.append(self.error_record(item, reason, str(data), run_id, run_at))
                    continue
                raise data  # S3 unreachable: transient, the task is retried
            try:
                loaded.append((item, self.load(item.id, data)))
            except ImageDecodeError as exc:
                errors.append(self.error_record(item, exc.reason, exc.message, run_id, run_at))
            except Exception as exc:  # noqa: BLE001 - a decoder bug on one object must not fail its batch
                log.warning("decoding %s failed unexpectedly: %r", item.id, exc)
                errors.append(self.error_record(item, "undecodable", f"{type(exc).__name__}: {exc}", run_id, run_at))
        t1 = time.perf_counter()
        pics = [im for _, im in loaded]
        phashes = self.phash.compute(pics)
        views = self.views_of(pics)
        t2 = time.perf_counter()
        raw = self.resnet.compute_raw(pics)
        embeddings = self.resnet.whiten(raw)
        t3 = time.perf_counter()
        for stage, seconds in {"decode_s": t1 - t0, "phash_s": t2 - t1, "resnet_s": t3 - t2}.items():
            self.timings[stage] += seconds
        words = self.words_of(pics)  # (indexed with the image: a later batch's search must see them)
        images = [IndexedImage(id=item.id, sha256=im.sha256, source=item.source, width=im.width,
                               height=im.height, num_bytes=im.num_bytes, created_at=item.created_at_ms,
                               phash=phashes[i], resnet=embeddings[i], raw=raw[i], words=words[i],
                               views=views[i])
                  for i, (item, im) in enumerate(loaded)]
        return Prepared(images, errors, {im.image_id: im for im in pics})

    def views_of(self, pics: Sequence[LoadedImage]) -> list[np.ndarray | None]:
        """Per picture, the pHash of its other views (PHashSignal.VIEWS), searched like the turned
        variants; None where that search is off (NDID_PHASH_TURNED_RADIUS=0)."""
        if self.settings.phash_turned_radius <= 0:
            return [None] * len(pics)
        return list(self.phash.views(pics))

    def error_record(self, item: SourceItem, reason: str, message: str, run_id: str, run_at: str) -> DecisionRecord:
        return DecisionRecord(id=item.id, source=item.source, decision="error", error_reason=reason,
                              error_message=message[:500], weights_mode=self.settings.weights_mode,
                              untrained=self.settings.untrained, run_id=run_id,
                              created_at=iso_ms(item.created_at_ms), decided_at=run_at)

    def index_prepared(self, prepared: Prepared, run_id: str, now_ms: int | None = None) -> None:
        """Upsert the good images (error objects live only in their records)."""
        t0 = time.perf_counter()
        self.index.upsert(list(prepared.images), now_ms or int(time.time() * 1000))
        self._loaded.update(prepared.loaded)
        self.timings["upsert_s"] += time.perf_counter() - t0

    def decide(self, images: Sequence[IndexedImage], run_id: str, run_at: str) -> list[DecisionRecord]:
        """Decide images (in ingestion order) and store the decisions on their index rows."""
        t0 = time.perf_counter()
        cal = self.calibration
        matcher = self.matcher()
        originals: dict[str, str] = {}
        records = []
        ordered = sorted(images, key=lambda im: (im.created_at, im.id))
        candidates: dict[str, list[str]] = {}
        turned: dict[str, list[tuple[str, str]]] = {}
        words: dict[str, list[str]] = {}
        for start in range(0, len(ordered), SEARCH_BATCH):
            candidates.update(matcher.candidates_many(ordered[start:start + SEARCH_BATCH]))
            turned.update(matcher.turned_candidates_many(ordered[start:start + SEARCH_BATCH]))
            words.update(matcher.words_candidates_many(ordered[start:start + SEARCH_BATCH]))
        matcher.prefetch(ordered, candidates, turned, words)
        plan = matcher.stage2_plan(ordered, candidates, turned, words)
        self.warm_stage2(list(plan) + [c for cands in plan.values() for c in cands])
        for image in ordered:
            before = matcher.stage2_pairs
            rec = matcher.decide(image, originals, candidates[image.id], turned.get(image.id, []),
                                 words.get(image.id, []))
            rec.stage2_pairs = matcher.stage2_pairs - before
            rec.calibration_version = cal.version
            rec.weights_mode = self.settings.weights_mode
            rec.untrained = self.settings.untrained or cal.untrained
            rec.run_id, rec.decided_at, rec.created_at = run_id, run_at, iso_ms(image.created_at)
            records.append(rec)
        self.index.set_decisions([{"id": r.id, "decision": r.decision, "matched_id": r.matched_id,
                                   "original_id": r.original_id, "run_id": run_id} for r in records])
        self.timings["decide_s"] += time.perf_counter() - t0
        return records

    def pictures(self, ids: list[str]) -> dict[str, LoadedImage]:
        """Decoded images for ids: from this process's cache, else re-read from their source."""
        out = {i: self._loaded[i] for i in ids if i in self._loaded}
        missing = [i for i in dict.fromkeys(ids) if i not in out]
        if missing:
            sources = self.index.get_rows(missing, ["source"])
            for image_id in missing:
                if image_id not in sources:
                    continue
                try:
                    out[image_id] = self.load(image_id, self.read_bytes(sources[image_id]["source"]))
                except Exception as exc:  # noqa: BLE001 - the pair falls back to stage 1
                    log.warning("cannot re-read %s: %s", image_id, exc)
        return out

    def full_picture(self, image_id: str) -> Image.Image | None:
        """The image at up to NDID_CLOSER_LOOK_SIDE, decoded again from its source for a closer look
        at a weak match (see GeometricSignal.closer_look); None when it cannot be read."""
        if image_id not in self._full:
            self.full_pictures_read += 1
            source = self.sources.get(image_id) or self.index.get_rows([image_id], ["source"]).get(image_id, {}).get("source")
            try:
                data = source if isinstance(source, bytes) else self.read_bytes(source) if source else None
                self._full[image_id] = None if data is None else self.load(
                    image_id, data, self.settings.closer_look_side).image
            except Exception as exc:  # noqa: BLE001 - the pair keeps its plain inlier count
                log.warning("cannot re-read %s for a closer look: %s", image_id, exc)
                self._full[image_id] = None
        return self._full[image_id]

    def clip_vectors(self, ids: list[str]) -> dict[str, np.ndarray]:
        """CLIP vectors: stored ones are reused; missing ones are computed once and stored
        (only for indexed images -- a query's vector is never written)."""
        t0 = time.perf_counter()
        found = {i: self.features.clip[i] for i in ids if i in self.features.clip}
        lookup = [i for i in dict.fromkeys(ids) if i not in found]
        found.update(self.index.get_clip(lookup) if lookup else {})
        missing = [i for i in dict.fromkeys(ids) if i not in found]
        if missing:
            pics = self.pictures(missing)
            if pics:
                order = list(pics)
                vectors = self.clip.compute([pics[i] for i in order])
                new = {image_id: vectors[n] for n, image_id in enumerate(order)}
                indexed = self.index.get_rows(order, ["id"])
                self.index.upsert_clip({k: v for k, v in new.items() if k in indexed})
                found.update(new)
                self.clip_images_computed += len(order)
        self.features.clip.update(found)
        self.timings["clip_s"] += time.perf_counter() - t0
        return found

    def keep_local_features(self, prepared: Prepared) -> int:
        """SIFT features of a batch's images, computed while their pixels are at hand (the parallel
        embed step) and written to the feature store: a later decide, in any process, verifies
        against them without reading the images again. Returns the bytes stored."""
        if self.feature_store is None or not prepared.loaded:
            return 0
        feats = self.local_features(list(prepared.loaded), pictures=prepared.loaded)  # (visual words computed them)
        return self.feature_store.put_many(feats)

    def local_features(self, ids: list[str], pdq: bool = False,
                       pictures: dict[str, LoadedImage] | None = None) -> dict[str, Any]:
        """SIFT features per id (and, with ``pdq``, PDQ dihedral hashes into ``self.features.pdq``), cached in
        this process; read from the feature store where there is one, else computed from pixels --
        from ``pictures`` when given (images being ingested: computed, not looked up)."""
        t0 = time.perf_counter()
        missing = [i for i in dict.fromkeys(ids) if i not in self.features.local or (pdq and i not in self.features.pdq)]
        if missing and self.feature_store is not None and pictures is None:
            self.features.local.update(self.feature_store.get_many([i for i in missing if i not in self.features.local]))
            missing = [i for i in missing if i not in self.features.local or (pdq and i not in self.features.pdq)]
        if missing:
            pics = pictures if pictures is not None else self.pictures(missing)
            jobs: list[tuple[dict[str, Any], Callable[[list[LoadedImage]], Any]]] = [(self.features.local, self.geometry.compute)]
            if pdq:
                jobs.append((self.features.pdq, self.pdq.dihedral))
            for cache, compute in jobs:
                order = [i for i in missing if i in pics and i not in cache]
                cache.update(zip(order, compute([pics[i] for i in order]), strict=True))
        self.timings["geometry_s"] += time.perf_counter() - t0
        return {i: self.features.local[i] for i in ids if i in self.features.local}

    def faint_look(self, query_id: str, stage2: list[tuple[str, float]]) -> dict[str, float]:
        """log(1 + inliers) of the candidates a faint look raised (GeometricSignal.faint_look), for a
        query whose verified candidates, ``stage2`` ((candidate, log_inliers) in the order to look at
        them), are all weak; {} for a query that is not faint. Faint descriptions are cached by id."""
        query = self.features.local.get(query_id)
        if query is None or not stage2 or not self.settings.closer_look_side:
            return {}
        t0 = time.perf_counter()
        ids = [cid for cid, _ in stage2]

        def described(keys: Sequence[int | None]) -> list[Any]:
            wanted = [query_id if k is None else ids[k] for k in keys]
            known = {i: self._faint[i] for i in wanted if i in self._faint}
            new = [i for i in dict.fromkeys(wanted) if i not in known]
            known.update(zip(new, self.geometry.faint_described([self.full_picture(i) for i in new]), strict=True))
            self._faint.update({i: known[i] for i in new})
            return [known[i] for i in wanted]

        before = [round(float(np.expm1(log))) for _, log in stage2]
        after = self.geometry.faint_look(query, before, described)
        self.timings["geometry_s"] += time.perf_counter() - t0
        return {cid: float(np.log1p(n)) for cid, n, was in zip(ids, after, before, strict=True) if n > was}

    def turned_descriptors(self, wanted: list[tuple[str, str]]) -> dict[tuple[str, str], np.ndarray]:
        """Descriptors of queries turned by a right-angle rotation or mirror, {(id, variant): vector},
        in one batch; only asked for images with a turned pHash candidate (rare among uniques).
        Pixels come from this process's cache, else from the image's source."""
        t0 = time.perf_counter()
        pics = self.pictures(list(dict.fromkeys(i for i, _ in wanted)))
        keys = [k for k in wanted if k[0] in pics]
        out: dict[tuple[str, str], np.ndarray] = {}
        if keys:
            vectors = self.resnet.compute([PHashSignal.turned(pics[i], v) for i, v in keys])
            out = {k: np.asarray(vec, np.float32) for k, vec in zip(keys, vectors, strict=True)}
        self.timings["turned_s"] += time.perf_counter() - t0
        return out

    def stage2_signals(self, every: bool = False) -> set[str]:
        """The optional stage-2 features to compute: those the active calibration uses (each kept
        only because it added held-out AP or image-level recall, see calibrate), or ``every`` one."""
        return set(OPTIONAL_STAGE2) if every else set(self.calibration.stage2.features) & set(OPTIONAL_STAGE2)

    def warm_stage2(self, ids: list[str]) -> None:
        """CLIP vectors and local features for many images at once (batched CLIP forward passes),
        so that the per-pair stage 2 below only compares."""
        if ids:
            wanted = self.stage2_signals()
            if "clip_cosine" in wanted:
                self.clip_vectors(ids)
            self.local_features(ids, pdq="pdq_distance" in wanted)

    def stage2_features(self, query_id: str, candidate_ids: list[str],
                        every: bool = False) -> dict[str, dict[str, float]]:
        """log(1 + distinct inliers) for ambiguous pairs (query vs each candidate), plus the optional
        signals the calibration uses (CLIP cosine, PDQ dihedral distance) -- or all with ``every``."""
        ids = [query_id, *candidate_ids]
        wanted = self.stage2_signals(every)
        clip = self.clip_vectors(ids) if "clip_cosine" in wanted else None
        use_pdq = "pdq_distance" in wanted
        local = self.local_features(ids, pdq=use_pdq)
        needed = [local] + ([clip] if clip is not None else []) + ([self.features.pdq] if use_pdq else [])
        if any(query_id not in d for d in needed):
            return {}
        t0 = time.perf_counter()
        usable = [cid for cid in candidate_ids if all(cid in d for d in needed)]
        pixels = None
        if self.settings.closer_look_side:
            def pixels(k: int | None) -> Image.Image | None:
                return self.full_picture(query_id if k is None else usable[k])
        inliers = self.geometry.verify_many(local[query_id], [local[cid] for cid in usable], pixels=pixels)
        out = {}
        for cid, count in zip(usable, inliers, strict=True):
            out[cid] = {"log_inliers": float(np.log1p(count))}
            if clip is not None:
                out[cid]["clip_cosine"] = float(np.dot(clip[query_id], clip[cid]))
            if use_pdq:
                out[cid]["pdq_distance"] = self.pdq.dihedral_distance(self.features.pdq[query_id], self.features.pdq[cid]) / self.pdq.dim
        self.timings["geometry_s"] += time.perf_counter() - t0
        return out

    # ---------------------------------------------------------------- whole batches
    def ingest(self, items: Sequence[SourceItem], run_id: str, run_at: str | None = None,
               progress: Callable[[int], None] | None = None) -> list[DecisionRecord]:
        """prepare -> index -> decide, chunk by chunk (items must be in ingestion order, as from
        local_items / S3 listings: each chunk's images only need earlier ones in the index)."""
        run_at = run_at or datetime.now(UTC).isoformat(timespec="seconds")
        records: list[DecisionRecord] = []
        bs = self.settings.ingest_batch_size
        for start in range(0, len(items), bs):
            chunk = items[start:start + bs]
            prepared = self.prepare(chunk, run_id, run_at)
            self.index_prepared(prepared, run_id)
            records += self.decide(prepared.images, run_id, run_at) + prepared.errors
            for image_id in prepared.loaded:  # decoded pixels are only kept while their chunk is decided
                self._loaded.pop(image_id, None)
            if progress:
                progress(len(chunk))
        if items:
            self.index.seal_words()  # (Lite: queries after the run search an indexed segment)
        order = {item.id: n for n, item in enumerate(items)}
        return sorted(records, key=lambda r: order.get(r.id, 0))

    def query(self, data: bytes, image_id: str = "query", limit: int = 5) -> list[dict[str, Any]]:
        """Top matches for an image that is not indexed (nothing is written)."""
        pic = self.load(image_id, data)
        image = IndexedImage(id=image_id, sha256=pic.sha256, source="", width=pic.width, height=pic.height,
                             num_bytes=pic.num_bytes, created_at=0, phash=self.phash.compute([pic])[0],
                             resnet=self.resnet.compute([pic])[0], views=self.views_of([pic])[0])
        self.forget([image_id])  # a reused query id must not see the previous query's features
        self._loaded[image_id] = pic
        self.sources[image_id] = data  # for a closer look at the query itself
        try:
            image.words = self.words_of([pic])[0]
            return self._query(image, pic, limit)
        finally:
            self.forget([image_id])

    def forget(self, ids: Sequence[str]) -> None:
        """Drop cached pixels, local features, PDQ hashes and CLIP vectors of these ids."""
        for image_id in ids:
            self._loaded.pop(image_id, None)
            self._full.pop(image_id, None)
            self._faint.pop(image_id, None)
            self.sources.pop(image_id, None)
        self.features.forget(ids)

    def matcher(self, top_k: int | None = None) -> Matcher:
        """A Matcher with this engine's calibration and the settings' overrides (threshold, band)."""
        low, high = self.settings.ambiguous_low, self.settings.ambiguous_high
        band = (low, high) if low is not None and high is not None else None
        matcher = Matcher(self.index, self.calibration, self.settings.phash_radius,
                          top_k or self.settings.resnet_top_k, self.stage2_features,
                          threshold=self.settings.decision_threshold, band=band,
                          stage2_max=self.settings.stage2_max_candidates,
                          turned_radius=self.settings.phash_turned_radius,
                          turned_descriptors=self.turned_descriptors,
                          words_candidates=self.words_candidates(),
                          words_max=self.settings.visual_words_max_candidates,
                          words_full=self.settings.sift_features // 2,
                          words_min_ratio=self.settings.visual_words_min_ratio,
                          band_words_ratio=self.settings.visual_words_band_ratio, faint_look=self.faint_look,
                          background_sample=self.background_sample,
                          words_generic=self.words.generic if self.words is not None else ())
        matcher.decide_earlier = lambda image_id, originals: self._decide_earlier(matcher, image_id, originals)
        return matcher

    def words_candidates(self) -> int:
        """How many words candidates to search for: NDID_VISUAL_WORDS_CANDIDATES, or 0 where the words
        are off or their collection on Milvus Lite (a scan per search) has outgrown
        NDID_VISUAL_WORDS_LITE_MAX_ROWS."""
        limit, wanted = self.settings.visual_words_lite_max_rows, self.settings.visual_words_candidates
        if self.words is None or not wanted:
            return 0
        if limit and self.index.is_lite:
            rows = self.index.count(self.index.words)
            if rows > limit:
                if not self._words_limit_logged:
                    log.warning("visual words not searched: %d rows on Milvus Lite > NDID_VISUAL_WORDS_LITE_MAX_ROWS=%d "
                                "(Lite scans sparse vectors; use a Milvus server, or raise the limit); still stored",
                                rows, limit)
                    self._words_limit_logged = True
                return 0
        return wanted

    def _decide_earlier(self, matcher: Matcher, image_id: str, originals: dict[str, str]) -> str:
        """The original of an indexed, not yet decided image, decided here from its index row alone
        (the same inputs its own task uses); nothing is written -- its own task writes its record."""
        row = self.index.get_rows([image_id], list(IMAGE_ROW_FIELDS)).get(image_id)
        if row is None:
            return image_id
        pics = self.pictures([image_id]) if self.settings.phash_turned_radius > 0 else {}
        views = self.views_of([pics[image_id]])[0] if image_id in pics else None  # (not indexed: read again)
        image = IndexedImage(**{k: row[k] for k in IMAGE_ROW_FIELDS if k not in ("phash", "resnet")},
                             phash=np.asarray(row["phash"], np.float32), resnet=np.asarray(row["resnet"], np.float32),
                             words=self.index.get_words([image_id]).get(image_id), views=views)
        pairs = matcher.stage2_pairs
        try:
            return matcher.decide(image, originals).original_id
        finally:
            matcher.stage2_pairs = pairs  # the pairs are counted by the image's own decision

    def _query(self, image: IndexedImage, pic: LoadedImage, limit: int) -> list[dict[str, Any]]:
        matcher = self.matcher(max(self.settings.resnet_top_k, limit))
        cands = matcher.candidates(image, before=False)
        turned = matcher.turned_candidates_many([image], before=False).get(image.id, [])
        words = matcher.words_candidates_many([image], before=False).get(image.id, [])
        hashes = self.index.get_rows(cands, ["sha256"]) if cands else {}
        exact = {c for c in cands if hashes.get(c, {}).get("sha256") == pic.sha256}
        out = []
        for s in matcher.rank(image, cands, turned, before=False, words=words)[:limit]:
            is_exact = s.candidate_id in exact
            out.append({"id": s.candidate_id, "probability": 1.0 if is_exact else s.probability,
                        "stage": "exact" if is_exact else s.stage,
                        "decision": "duplicate" if is_exact or s.probability >= matcher.threshold else "unique",
                        "original_id": matcher.resolve_original(s.candidate_id, {}),
                        "orientation": s.orientation, "features": s.features, "contributions": s.contributions})
        return out


def _is_client_error(exc: Exception) -> bool:
    try:
        from botocore.exceptions import ClientError
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in (
        "404", "NoSuchKey", "403", "AccessDenied", "InvalidObjectState")


def resolve_whitening(settings: Settings, calibration: Calibration) -> Whitening | None:
    """The whitening the calibration was fitted with: NDID_WHITENING_FILE, else the packaged one,
    else the one stored beside the calibrations in S3. None for a calibration without whitening."""
    wanted = calibration.whitening_version
    if settings.whitening_file:
        w = load_whitening_file(settings.whitening_file)
        if wanted and w.version != wanted:
            raise WhiteningError(f"NDID_WHITENING_FILE holds whitening {w.version} but calibration "
                                 f"{calibration.version} was fitted with {wanted}; use both from one "
                                 f"`ndid whitening fit` run")
        return w
    if not wanted:
        return None
    shipped = packaged_whitening(settings.weights_mode)
    if shipped is not None and shipped.version == wanted:
        return shipped
    if settings.s3_access_key:
        from .calibration_store import CalibrationStore

        stored = CalibrationStore(settings).whitening(wanted)
        if stored is not None:
            return stored
    raise WhiteningError(f"calibration {calibration.version} needs whitening {wanted}, which is neither packaged "
                         f"nor in S3 ({settings.s3_calibration_prefix}whitening/); set NDID_WHITENING_FILE")


def resolve_calibration(settings: Settings) -> Calibration:
    """NDID_CALIBRATION_FILE, else the active calibration in S3 (if reachable), else the shipped one;
    with a warning when it was fitted at other SIFT settings (its inlier weights assume its own)."""
    cal = _resolve_calibration(settings)
    fitted = cal.training.get("sift")
    now = settings.sift_params
    if fitted and fitted != now:
        log.warning("calibration %s was fitted with SIFT %s, this process verifies with %s: refit it "
                    "(ndid calibrate, or the ndid_recalibrate DAG) before trusting its threshold",
                    cal.version, fitted, now)
    return cal


def _resolve_calibration(settings: Settings) -> Calibration:
    if settings.calibration_file:
        return load_calibration_file(settings.calibration_file)
    if settings.s3_access_key:
        try:
            from .calibration_store import CalibrationStore

            active = CalibrationStore(settings).active()
            if active is not None:
                return active
        except Exception as exc:  # noqa: BLE001 - S3 down: fall back, loudly
            log.warning("cannot read the active calibration from S3 (%s); using the shipped default", exc)
    return default_calibration(settings.weights_mode)


# ---------------------------------------------------------------- run summaries

def summarize(records: Sequence[dict[str, Any] | DecisionRecord], seconds: float | None = None) -> dict[str, Any]:
    rows = [r.to_dict() if isinstance(r, DecisionRecord) else r for r in records]
    decisions = Counter(r["decision"] for r in rows)
    stages = Counter(r["stage"] for r in rows if r["decision"] != "error")
    errors = Counter(r["error_reason"] for r in rows if r["decision"] == "error")
    decided = [r for r in rows if r["decision"] != "error"]
    clip_images = sum(1 for r in decided if r.get("stage2_pairs", 0) > 0)
    out = {"objects": len(rows), "decisions": dict(decisions), "stages": dict(stages), "errors": dict(errors),
           "stage2_share": clip_images / len(decided) if decided else 0.0,
           "untrained": any(r.get("untrained") for r in rows)}
    if seconds:
        out["seconds"] = round(seconds, 3)
        out["images_per_s"] = round(len(rows) / seconds, 2) if seconds > 0 else None
    return out


def records_jsonl(records: Sequence[DecisionRecord]) -> str:
    return "".join(json.dumps(r.to_dict(), sort_keys=True) + "\n" for r in records)


# ---------------------------------------------------------------- staging (between DAG tasks)

def pack_prepared(prepared: Prepared) -> bytes:
    """A batch's signals as NPZ (arrays + JSON metadata), loadable with allow_pickle=False."""
    meta = [{k: getattr(im, k) for k in ("id", "sha256", "source", "width", "height", "num_bytes", "created_at")}
            for im in prepared.images]
    arrays: dict[str, np.ndarray] = {
        "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        "errors": np.frombuffer(json.dumps([e.to_dict() for e in prepared.errors]).encode(), dtype=np.uint8),
        "phash": np.array([im.phash for im in prepared.images], dtype=np.float32).reshape(-1, 64),
        "raw": np.array([im.raw for im in prepared.images], dtype=np.float32).reshape(len(prepared.images), -1),
        **({"views": np.array([im.views for im in prepared.images], dtype=np.float32)}
           if prepared.images and all(im.views is not None for im in prepared.images) else {}),
        **pack_words([im.words for im in prepared.images]),
    }
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrays)  # (numeric arrays only)
    return buf.getvalue()


def unpack_prepared(data: bytes, resnet: GlobalDescriptorSignal) -> Prepared:
    """Staged signals back; the raw descriptors are whitened here, by the consumer's whitening, so a
    whitening switch between the embed and the index task cannot mix vector spaces."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        meta = json.loads(npz["meta"].tobytes())
        errors = [DecisionRecord(**e) for e in json.loads(npz["errors"].tobytes())]
        raw = npz["raw"]
        whitened = resnet.whiten(raw) if len(meta) else raw
        words = unpack_words(npz, len(meta))
        # (staged by an older version: the quarters alone, VIEWS' first rows, or none)
        views = next((npz[key] for key in ("views", "quarters") if key in npz.files), None)
        images = [IndexedImage(**m, phash=npz["phash"][i], resnet=whitened[i], raw=raw[i], words=words[i],
                               views=None if views is None else views[i])
                  for i, m in enumerate(meta)]
    return Prepared(images, errors)
