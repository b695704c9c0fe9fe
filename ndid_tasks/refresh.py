"""Whitening refresh: fit a whitening on the indexed corpus, re-index, recalibrate, switch atomically.

    1. sample raw descriptors of the indexed corpus (kept for every image in the raw collection,
       see ImageIndex: on disk, never loaded for search)
    2. decode a smaller sample (of images decided unique) and make attacked copies: the whitening
       learns how copies differ, and the same synthetic pairs fit the calibration (never audited
       or benchmark labels)
    3. copy every row into the collection named after the new whitening, vectors re-whitened from
       the raw descriptors; decisions and all other fields are copied unchanged
    4. store the whitening, then move the calibration's ``active.json`` (one S3 write): the next
       task of any run reads the new calibration -> new whitening -> new collection

Visual words are derived the same way: :func:`backfill_words` gives every indexed image that has
none (indexed before NDID_VISUAL_WORDS, or under another vocabulary, whose collection starts empty)
its words, from the stored SIFT features, else from the image's source.

Run it where nothing else writes the index (the recalibration DAG holds the ``ndid_milvus`` pool
slot that ingest's index/decide tasks also need); the old collection is kept for rollback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .bootstrap import bootstrap_features_from_images, fit_bootstrapped
from .calibration import Calibration
from .index import ImageIndex, placeholder_vector
from .whitening import DescriptorMismatchError, Whitening

log = logging.getLogger(__name__)

MIN_BOOTSTRAP_IMAGES = 30  # fewer give a degenerate image-level check set (measured: 8 -> recall 0.33)
COPY_FIELDS = ["sha256", "source", "width", "height", "num_bytes", "created_at", "ingested_at", "decision",
               "matched_id", "original_id", "run_id", "weights_mode", "phash", "resnet_raw"]


def sample_corpus(index: ImageIndex, limit: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Ids and raw descriptors of up to ``limit`` rows decided unique (uniform reservoir sample).

    Known duplicates stay out: the bootstrap treats its images as mutually distinct, and an image
    next to its own copy would teach the image-level threshold that true matches are errors."""
    rng = np.random.default_rng(seed)
    ids: list[str] = []
    raws: list[np.ndarray] = []
    seen = 0
    for page in index.iter_rows(["decision", "resnet_raw"]):
        for row in page:
            if row["decision"] != "unique" or not row.get("resnet_raw"):
                continue
            seen += 1
            if len(ids) < limit:
                ids.append(row["id"])
                raws.append(np.asarray(row["resnet_raw"], np.float32))
            else:
                j = int(rng.integers(seen))
                if j < limit:
                    ids[j], raws[j] = row["id"], np.asarray(row["resnet_raw"], np.float32)
    return ids, (np.stack(raws) if raws else np.zeros((0, 0), np.float32))


def reindex(source: ImageIndex, target: ImageIndex, whitening: Whitening,
            progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """Copy every row of ``source`` into ``target`` with the ResNet vector re-whitened from its raw
    descriptor. Idempotent (upsert by id). Rows without a raw descriptor cannot be re-whitened:
    they are copied as not searchable and counted, so a later run re-embeds them."""
    counts = {"rows": 0, "rewhitened": 0, "errors": 0, "missing_raw": 0}
    placeholder = placeholder_vector(whitening.dim).tolist()
    for page in source.iter_rows(COPY_FIELDS):
        rows = [{k: row[k] for k in ["id", *COPY_FIELDS]} for row in page]
        usable = [r for r in rows if r["decision"] != "error" and len(r.get("resnet_raw") or []) == whitening.raw_dim]
        if usable:
            vectors = whitening.apply(np.asarray([r["resnet_raw"] for r in usable], np.float32))
            for row, vector in zip(usable, vectors, strict=True):
                row["resnet"] = vector.tolist()
        counts["rewhitened"] += len(usable)
        for row in rows:
            if "resnet" not in row:
                counts["errors" if row["decision"] == "error" else "missing_raw"] += 1
                row["resnet"], row["decision"] = placeholder, "error"
        if rows:
            if not target.inline_raw:  # raw descriptors live in their own collection
                if source.inline_raw or source.raw != target.raw:
                    target.upsert_raw({r["id"]: r["resnet_raw"] for r in rows if r.get("resnet_raw")})
                for row in rows:
                    row.pop("resnet_raw", None)
            target.client.upsert(target.images, rows)
        counts["rows"] += len(rows)
        if progress:
            progress(len(rows))
    return counts


def switch_to(engine, cal: Calibration, whitening: Whitening,
              activate: bool = True) -> dict[str, Any]:
    """Re-index the engine's current collection into ``whitening``'s, then (with ``activate``) store
    the whitening and move the calibration's ``active.json`` -- the one atomic switch."""
    settings = engine.settings
    from .calibration_store import CalibrationStore

    try:
        current: ImageIndex | None = engine.index
    except DescriptorMismatchError:  # the first calibration of a new NDID_DESCRIPTOR: another model's
        current = None  # vectors cannot be re-whitened into it; a reprocess run re-embeds the images
    target = ImageIndex(settings, settings.images_collection(whitening.version), whitening.dim,
                        client=current.client if current is not None else None, raw_dim=whitening.raw_dim)
    counts = reindex(current, target, whitening) if current is not None and target.images != current.images \
        else {"rows": 0}
    out: dict[str, Any] = {"previous_collection": current.images if current is not None else None,
                           "collection": target.images, "reindex": counts, "status": "fitted"}
    try:
        if activate:
            store = CalibrationStore(settings)
            store.save_whitening(whitening)  # first: the calibration that names it must always resolve
            store.activate(cal)
            target.point_alias(settings.images_alias)
            out["status"] = "activated"
    finally:
        if current is None:  # target opened its own client
            target.close()
    return out


def refresh_due(engine) -> tuple[bool, str]:
    """A refresh pays once the index is big enough and the active whitening was not fitted on it,
    or the index has doubled since that fit."""
    settings = engine.settings
    rows = engine.index.count()
    w = engine.resnet.whitening
    fitted = (w.fitted_on if w is not None else {}) or {}
    if rows < settings.whitening_min_images:
        return False, f"{rows} indexed rows < NDID_WHITENING_MIN_IMAGES={settings.whitening_min_images}"
    if fitted.get("source") != "index":
        return True, f"whitening {w.version if w else 'none'} was not fitted on this index ({rows} rows)"
    if rows >= 2 * int(fitted.get("index_rows", 0)):
        return True, f"index grew to {rows} rows from {fitted.get('index_rows')} at the last fit"
    return False, f"whitening {w.version} fitted when the index had {fitted.get('index_rows')} of now {rows} rows"


def refresh_whitening(engine, sample_images: int = 150, copies: int = 3,
                      corpus_sample: int = 20_000, seed: int = 0, activate: bool = True,
                      progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Fit a whitening + calibration on the current index and switch to them (see module doc)."""
    settings = engine.settings
    t0 = time.perf_counter()
    current = engine.index
    ids, corpus_raw = sample_corpus(current, corpus_sample, seed)
    if len(ids) < MIN_BOOTSTRAP_IMAGES or min(len(ids), sample_images) < MIN_BOOTSTRAP_IMAGES:
        return {"status": "skipped", "indexed": len(ids),
                "reason": f"{len(ids)} indexed images (sample {sample_images}): a whitening and calibration "
                          f"need at least {MIN_BOOTSTRAP_IMAGES}"}
    chosen = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))[:sample_images]]
    pictures = engine.pictures(chosen)
    originals = [pictures[i] for i in chosen if i in pictures]
    boot = bootstrap_features_from_images(settings, originals, copies=copies, seed=seed, progress=progress,
                                          corpus_raw=corpus_raw)
    boot.summary["source"] = "index"
    whitening = boot.whitening
    whitening.fitted_on["index_rows"] = current.count()  # metadata only: not part of the version hash
    cal = fit_bootstrapped(settings, boot, seed)
    cal.version = f"index-{cal.version}-{whitening.version}"
    result = {"status": "fitted", "whitening": whitening.version, "calibration": cal.version,
              "corpus_descriptors": len(corpus_raw), "bootstrap_images": len(originals),
              "calibration_metrics": cal.metrics.get("gated", {})}
    result.update(switch_to(engine, cal, whitening, activate=activate))
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["_calibration"], result["_whitening"] = cal, whitening
    log.info("whitening refresh: %s", {k: v for k, v in result.items() if not k.startswith("_")})
    return result


def _words_mark(engine) -> tuple[Any, str] | None:
    """Where the last complete backfill of this words collection left its counts (S3), if any."""
    if not engine.settings.s3_access_key:
        return None
    prefix = engine.settings.s3_features_prefix
    return engine.s3(engine.settings.s3_bucket), f"{prefix}words-backfill/{engine.index.words}.json"


def words_backfill_due(engine) -> tuple[bool, str]:
    """Due when the words collection (one per vocabulary) has fewer rows than the index: words were
    turned on, or the vocabulary changed, after images were indexed. Images that cannot have words
    (no keypoints, unreadable, error rows) are known from the last complete backfill, so an index
    holding some is not due again until it changes."""
    if engine.words is None:
        return False, "visual words are off (NDID_VISUAL_WORDS=0)"
    index = engine.index
    rows, with_words = index.count(), index.count(index.words)
    mark = _words_mark(engine)
    without = 0
    if mark is not None and mark[0].exists(mark[1]):
        without = int(mark[0].get_json(mark[1]).get("without_words", 0))
    if with_words + without < rows:
        return True, f"{index.words} holds {with_words} of {rows} indexed images ({without} cannot have words)"
    return False, f"{index.words} holds words for all {rows} indexed images that can have them ({without} cannot)"


def backfill_words_when_due(engine, mode: str = "auto", batch_size: int = 64) -> dict[str, Any]:
    """The maintenance task: ``auto`` backfills when :func:`words_backfill_due`, ``always`` anyway
    (words on), ``never`` not at all; the result says which and why. A complete run records how
    many images cannot have words, for the next due check."""
    due, reason = words_backfill_due(engine)
    if mode == "never" or engine.words is None or (mode == "auto" and not due):
        return {"status": "not due" if mode == "auto" else "disabled", "reason": reason}
    counts = backfill_words(engine, batch_size=batch_size)
    mark = _words_mark(engine)
    if mark is not None:
        without = counts["no_keypoints"] + counts["unreadable"] + counts["error_rows"]
        mark[0].put_json(mark[1], {"collection": engine.index.words, **counts, "without_words": without,
                                   "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return {"status": "done", "reason": reason, "collection": engine.index.words, **counts}


def backfill_words(engine, batch_size: int = 64, progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """Visual words for every indexed image without them. Idempotent and resumable: rows that have
    words are skipped, so a re-run only does what an interrupted one left. Error rows are skipped;
    an image whose features cannot be had (no stored features, source unreadable) is counted."""
    words, index = engine.words, engine.index
    if words is None:
        raise ValueError("visual words are off (NDID_VISUAL_WORDS=0): nothing to backfill")
    counts = {"rows": 0, "had_words": 0, "added": 0, "no_keypoints": 0, "unreadable": 0, "error_rows": 0}
    for page in index.iter_rows(["decision", "created_at"]):
        usable = [r for r in page if r["decision"] != "error"]
        counts["error_rows"] += len(page) - len(usable)
        have = index.ids_with_words([r["id"] for r in usable])
        todo = [r for r in usable if r["id"] not in have]
        counts["had_words"] += len(have)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            ids = [r["id"] for r in chunk]
            local = engine.local_features(ids)
            found = [r for r in chunk if r["id"] in local]
            vectors = {r["id"]: (int(r["created_at"]), v) for r, v in
                       zip(found, words.from_local_many([local[r["id"]] for r in found]), strict=True)}
            index.upsert_words(vectors)
            engine.features.forget(ids)  # bounded memory over any index size
            added = sum(1 for _, v in vectors.values() if v)
            counts["added"] += added
            counts["no_keypoints"] += len(vectors) - added
            counts["unreadable"] += len(chunk) - len(vectors)
        counts["rows"] += len(page)
        if progress:
            progress(len(page))
        log.info("visual words backfill: %d rows seen, %d added, %d had words", counts["rows"], counts["added"],
                 counts["had_words"])
    return counts
