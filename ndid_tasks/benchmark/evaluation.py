"""Accuracy: every method (the full pipeline, its ablations, peers) over the benchmark's queries."""

from __future__ import annotations

import itertools
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Settings
from ..decide import DecisionRecord, Matcher
from ..features import stage1_features, with_standins
from ..images import ImageDecodeError, LoadedImage, load_image
from ..index import IndexedImage
from ..metrics import Prediction, micro_ap, operating_point, recall_at_1, recall_at_precision
from ..pipeline import Engine, local_items
from ..signals.visual_words import VisualWordsSignal
from .generator import read_ground_truth
from .report import write_report
from .speed import machine, measure_speed, peak_rss_mb

log = logging.getLogger(__name__)


METHODS = ("full", "phash_only", "resnet_only", "phash_resnet_lr", "always_stage2",
           "peer_imagehash_phash", "peer_imagehash_dhash", "peer_pdq")


# ---------------------------------------------------------------- generator


@dataclass
class QueryResult:
    predictions: dict[str, Prediction]
    candidate_hit: bool
    stage2_invoked: bool
    keypoints: int = -1  # SIFT keypoints of the query (-1: not computed)


def _hamming_nn(q: np.ndarray, refs: np.ndarray) -> tuple[int, float]:
    d = np.count_nonzero(refs != q[None, :], axis=1)
    i = int(np.argmin(d))
    return i, float(d[i])


def _pdq(images: list[LoadedImage], dihedral: bool) -> list[np.ndarray]:
    import pdqhash

    out = []
    for im in images:
        arr = np.ascontiguousarray(np.asarray(im.image.convert("RGB")))
        if dihedral:
            hashes, _ = pdqhash.compute_dihedral(arr)
            out.append(np.asarray(hashes, dtype=bool))
        else:
            h, _ = pdqhash.compute(arr)
            out.append(np.asarray(h, dtype=bool)[None, :])
    return out


def as_deployed(settings: Settings) -> Settings:
    """The settings a deployment on this machine runs with: where compiled encoders pay (AMX, bf16)
    and NDID_TORCH_COMPILE leaves it to the machine (auto), the deployment has built them
    (`ndid models compile`, docker-compose's airflow-init), so the benchmark builds them too where
    missing -- once per machine and model, in the startup seconds, outside every figure."""
    from ..signals.embedding import native_bf16_available

    if settings.torch_compile == "auto" and settings.precision != "fp32" and native_bf16_available():
        return settings.replace(torch_compile="true")
    return settings


def run_benchmark(settings: Settings, folder: str | Path, out: str | Path, methods: str = "all",
                  progress: Callable[[int], None] | None = None, fit_whitening: bool = False) -> dict[str, Any]:
    import imagehash

    folder, out = Path(folder), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wanted = METHODS if methods == "all" else tuple(m.strip() for m in methods.split(","))
    db = out / "bench_milvus.db"
    shutil.rmtree(db, ignore_errors=True)
    if db.exists():
        db.unlink()
    settings = as_deployed(settings.replace(milvus_uri=str(db), milvus_collection_prefix="bench"))
    gt = read_ground_truth(folder)
    truth = {r["query"]: r["original"] for r in gt}
    family = {r["query"]: r["family"] for r in gt}
    engine = Engine(settings)
    report: dict[str, Any] = {"folder": str(folder), "weights_mode": settings.weights_mode,
                              "untrained": settings.untrained, "machine": machine(), "settings": {
                                  k: v for k, v in settings.public_dict().items()
                                  if k in ("phash_radius", "resnet_top_k", "milvus_hnsw_ef", "precision",
                                           "embed_batch_size", "resnet_layer", "resnet_gem_p", "resnet_input",
                                           "resnet_flip_symmetric", "whitening_dim", "stage2_max_candidates",
                                           "visual_words", "visual_words_candidates")},
                              "started_at": datetime.now(UTC).isoformat(timespec="seconds")}
    try:
        # --- index the refs: the end-to-end ingest path, timed
        items = local_items([folder / "refs"])
        rss0 = peak_rss_mb()
        startup_s = engine.warm_up()  # once per process; the bare reference below is warmed up too
        t0 = time.perf_counter()
        ingest_records = engine.ingest(items, run_id="bench", run_at="bench", progress=progress)
        ingest_s = time.perf_counter() - t0
        loaded_refs = []
        for item in items:
            try:
                loaded_refs.append(load_image(Path(item.source).read_bytes(), item.id))
            except ImageDecodeError as exc:
                log.warning("benchmark: reference %s unreadable (%s); it cannot be matched", item.source, exc)
        ref_ids = [p.image_id for p in loaded_refs]
        ref_name = {i.id: Path(i.source).name for i in items}
        report["refs_called_duplicates"] = refs_called_duplicates(ingest_records, ref_name)
        report["speed"] = measure_speed(engine, loaded_refs, ingest_s, len(items), rss0)
        from ..pipeline import summarize

        report["speed"]["startup_s"] = round(startup_s, 2)
        report["speed"]["stage2_share_at_ingest"] = round(summarize(ingest_records)["stage2_share"], 3)
        # the refs ingested once the index holds enough images for its own words background (the
        # first ones are judged against generic photos' words instead, or verify every candidate
        # without them: a small benchmark index would otherwise mostly measure them)
        later = ingest_records[VisualWordsSignal.MIN_SAMPLE:]
        if later:
            report["speed"]["stage2_share_at_ingest_later"] = round(summarize(later)["stage2_share"], 3)
        if fit_whitening:  # the corpus-specific whitening + calibration, as `ndid whitening fit` makes them
            from ..refresh import refresh_whitening

            refreshed = refresh_whitening(engine, activate=False)
            cal, whitening = refreshed.pop("_calibration"), refreshed.pop("_whitening")
            report["whitening_refresh"] = refreshed
            engine.close()
            engine = Engine(settings, calibration=cal, whitening=whitening)
        t_pairs = time.perf_counter()
        report["refs_pairwise"] = refs_matched_pairwise(engine, loaded_refs, ref_name)
        report["refs_pairwise"]["seconds"] = round(time.perf_counter() - t_pairs, 1)
        rows = engine.index.get_rows(ref_ids, ["phash", "resnet"])
        ref_phash = np.array([rows[i]["phash"] for i in ref_ids], dtype=np.float32)
        ref_resnet = np.array([rows[i]["resnet"] for i in ref_ids], dtype=np.float32)
        ref_dhash = np.array([imagehash.dhash(im.image).hash.flatten() for im in loaded_refs])
        ref_pdq = np.concatenate(_pdq(loaded_refs, dihedral=False)) if "peer_pdq" in wanted else None

        # --- queries
        qfiles = [folder / "queries" / r["query"] for r in gt]
        cal = engine.calibration
        matcher = engine.matcher()
        report["visual_words_searched"] = matcher.words_candidates  # 0: off, or Lite past its row limit
        report["visual_words_max"] = matcher.words_max  # for images with few words (tight crops)
        report["visual_words_ratios"] = {"words_candidates": matcher.words_min_ratio,  # gates; 0: off
                                         "band_candidates": matcher.band_words_ratio}
        results: dict[str, QueryResult] = {}
        latencies = []
        chunk = settings.embed_batch_size
        for start in range(0, len(qfiles), chunk):
            batch_files = qfiles[start:start + chunk]
            pics = [load_image(p.read_bytes(), f"query:{p.name}") for p in batch_files]
            t_sig = time.perf_counter()
            ph = engine.phash.compute(pics)
            rn = engine.resnet.compute(pics)
            sig_per_image = (time.perf_counter() - t_sig) / len(pics)
            dh = [im_hash for im_hash in (imagehash.dhash(p.image).hash.flatten() for p in pics)]
            pdq = _pdq(pics, dihedral=True) if "peer_pdq" in wanted else None
            for k, (path, pic) in enumerate(zip(batch_files, pics, strict=True)):
                engine._loaded[pic.image_id] = pic
                engine.sources[pic.image_id] = str(path)
                t_q = time.perf_counter()
                results[path.name] = _evaluate_query(
                    path.name, pic, ph[k], rn[k], dh[k], pdq[k] if pdq else None, matcher, cal, engine,
                    ref_ids, ref_name, ref_phash, ref_resnet, ref_dhash, ref_pdq, truth, wanted)
                latencies.append(time.perf_counter() - t_q + sig_per_image)
                engine.forget([pic.image_id])
            if progress:
                progress(len(batch_files))
        report["query_latency_ms"] = {"p50": round(1000 * float(np.percentile(latencies, 50)), 1),
                                      "p95": round(1000 * float(np.percentile(latencies, 95)), 1)}
        report["accuracy"] = _accuracy(results, truth, family, wanted)
        report["operating_point"] = operating_point([r.predictions["full"] for r in results.values()], truth,
                                                    matcher.threshold) if "full" in wanted else {}
        hard = [q for q in results if family[q] == "hard_negative"]
        if hard:  # same-scene, not-duplicate queries: what each method's top score says about them
            report["hard_negatives"] = {"queries": len(hard), "full_false_positives": sum(
                results[q].predictions["full"].score >= matcher.threshold for q in hard) if "full" in wanted else None,
                "max_score": {m: round(max(results[q].predictions[m].score for q in hard), 4)
                              for m in wanted if all(m in results[q].predictions for q in hard)}}
        positives = [q for q in results if truth[q]]
        report["closer_looks"] = {"pairs": engine.geometry.closer_looks, "faint_pairs": engine.geometry.faint_looks,
                                  "pictures_read": engine.full_pictures_read}
        report["stage2_share_of_queries"] = sum(results[q].stage2_invoked for q in results) / max(len(results), 1)
        report["candidate_recall"] = {
            fam: sum(results[q].candidate_hit for q in positives if family[q] == fam) /
            max(1, sum(1 for q in positives if family[q] == fam))
            for fam in sorted({family[q] for q in positives})}
        report["stage2_share_by_kind"] = {kind: round(sum(results[q].stage2_invoked for q in qs) / len(qs), 3)
                                          for kind, qs in (("copies", positives),
                                                           ("unique", [q for q in results if not truth[q]])) if qs}
        if "full" in wanted:
            report["by_crop_area"] = crop_area_breakdown(results, gt, folder, matcher.threshold)
            report["by_crop_keypoints"] = crop_texture_breakdown(results, gt, matcher.threshold)
        report["calibration_version"] = cal.version
    finally:
        engine.close()
    report["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    write_report(report, results, truth, family, out, wanted)
    return report


CROP_FAMILIES = ("crop", "tight_crop")  # pure crops (+ JPEG): the kept area is the size ratio
CROP_AREA_BINS = (0.0, 0.10, 0.15, 0.30, 0.50, 1.0)
# a crop with fewer SIFT keypoints than this (flat sky, water) is beyond any local feature: reported apart
FEW_KEYPOINTS = 10


def crop_area_breakdown(results: dict[str, QueryResult], gt: list[dict[str, str]], folder: Path,
                        threshold: float) -> list[dict[str, Any]]:
    """Candidate recall, R@1 and recall at the threshold of the cropped copies, by the share of
    the original's area they keep (read from the image sizes, so any folder of crops works)."""
    from PIL import Image

    def size(path: Path) -> int:
        with Image.open(path) as im:
            return im.width * im.height

    kept: dict[str, float] = {}
    for r in gt:
        if r["family"] in CROP_FAMILIES and r["query"] in results and (folder / "refs" / r["original"]).exists():
            kept[r["query"]] = size(folder / "queries" / r["query"]) / size(folder / "refs" / r["original"])
    truth = {r["query"]: r["original"] for r in gt}
    return [{"kept_area": f"{lo:.0%}-{hi:.0%}", **_recalls(qs, results, truth, threshold)}
            for lo, hi in itertools.pairwise(CROP_AREA_BINS) if (qs := [q for q, a in kept.items() if lo < a <= hi])]


def crop_texture_breakdown(results: dict[str, QueryResult], gt: list[dict[str, str]],
                           threshold: float) -> list[dict[str, Any]]:
    """The cropped copies with fewer than FEW_KEYPOINTS SIFT keypoints (nothing a local feature can
    place) and the others, each with the recalls of :func:`crop_area_breakdown`."""
    truth = {r["query"]: r["original"] for r in gt}
    crops = [r["query"] for r in gt if r["family"] in CROP_FAMILIES and r["query"] in results
             and results[r["query"]].keypoints >= 0]
    groups = ((f"< {FEW_KEYPOINTS}", [q for q in crops if results[q].keypoints < FEW_KEYPOINTS]),
              (f">= {FEW_KEYPOINTS}", [q for q in crops if results[q].keypoints >= FEW_KEYPOINTS]))
    return [{"keypoints": name, **_recalls(qs, results, truth, threshold)} for name, qs in groups if qs]


def _recalls(qs: list[str], results: dict[str, QueryResult], truth: dict[str, str], threshold: float) -> dict[str, Any]:
    right = [results[q].predictions["full"].reference == truth[q] for q in qs]
    return {"queries": len(qs),
            "candidate_recall": round(float(np.mean([results[q].candidate_hit for q in qs])), 3),
            "recall_at_1": round(float(np.mean(right)), 3),
            "recall_at_threshold": round(float(np.mean(
                [ok and results[q].predictions["full"].score >= threshold for q, ok in zip(qs, right, strict=True)])), 3)}


def refs_called_duplicates(records: Sequence[DecisionRecord], names: dict[str, str]) -> dict[str, Any]:
    """The refs that the ingest decided duplicates of an earlier ref. `ndid bench make` puts one
    photo per source file in refs (originals, distractors, one view of each same-scene photo), so
    where the source folders hold no copies of each other each one is a false positive on real
    photos -- pairs nobody made, such as two shots of one animal."""
    found = [{"ref": names.get(r.id, r.id), "matched": names.get(r.matched_id, r.matched_id),
              "probability": round(r.probability, 4), "stage": r.stage}
             for r in records if r.decision == "duplicate"]
    return {"refs": sum(1 for r in records if r.decision != "error"), "called_duplicates": found}


def refs_matched_pairwise(engine: Engine, refs: Sequence[LoadedImage], names: dict[str, str],
                          chunk: int = 48) -> dict[str, Any]:
    """Every pair of refs matched by the verifier (no mirror, no looks; the later ref as the
    query): the refs are distinct source photos, so a pair with more than chance inliers is two
    shots of one scene (one tiger twice) or a copy in the source folders -- the real negatives
    no generator makes, whatever the gates would let through. Each is scored as a verified pair
    and set against the threshold. ~0.7 ms a pair: the 13,041 pairs of 162 refs take ~9 s."""
    geometry, matcher = engine.geometry, engine.matcher()
    local = engine.local_features([p.image_id for p in refs])
    refs = [p for p in refs if p.image_id in local]
    rows = engine.index.get_rows([p.image_id for p in refs], ["phash", "resnet"])
    pairs = 0
    found = []
    for b in range(1, len(refs)):
        for start in range(0, b, chunk):
            batch = refs[start:min(b, start + chunk)]
            pairs += len(batch)
            counts = geometry.verify_many(local[refs[b].image_id], [local[p.image_id] for p in batch], mirror=False)
            found += [(refs[b], a, n) for a, n in zip(batch, counts, strict=True) if n > geometry.chance]
    matched = []
    for query, earlier, inliers in found:
        row = rows[query.image_id]
        image = IndexedImage(id=query.image_id, sha256=query.sha256, source="", width=query.width,
                             height=query.height, num_bytes=query.num_bytes, created_at=0,
                             phash=np.asarray(row["phash"]), resnet=np.asarray(row["resnet"], np.float32))
        best = matcher.rank(image, [], [], before=False, words=[earlier.image_id])
        probability = best[0].probability if best else 0.0
        matched.append({"ref": names.get(query.image_id, query.image_id),
                        "matched": names.get(earlier.image_id, earlier.image_id), "inliers": int(inliers),
                        "probability": round(probability, 4), "called_duplicate": probability >= matcher.threshold})
    return {"refs": len(refs), "pairs": pairs, "above_chance": matched}


def _evaluate_query(qname, pic, phash, resnet, dhash, pdq, matcher: Matcher, cal, engine, ref_ids, ref_name,
                    ref_phash, ref_resnet, ref_dhash, ref_pdq, truth, wanted) -> QueryResult:
    preds: dict[str, Prediction] = {}
    image = IndexedImage(id=pic.image_id, sha256=pic.sha256, source="", width=pic.width, height=pic.height,
                         num_bytes=pic.num_bytes, created_at=0, phash=phash, resnet=resnet,
                         words=engine.words_of([pic])[0], views=engine.views_of([pic])[0])
    cands = matcher.candidates(image, before=False)
    turned = matcher.turned_candidates_many([image], before=False).get(image.id, [])
    words = matcher.words_candidates_many([image], before=False).get(image.id, [])
    hit = bool(truth[qname]) and any(ref_name.get(c) == truth[qname] for c in cands + [c for c, _ in turned] + words)
    stage2_invoked = False
    if "full" in wanted:
        before = matcher.stage2_pairs
        scores = matcher.rank(image, cands, turned, before=False, words=words)
        stage2_invoked = matcher.stage2_pairs > before
        preds["full"] = Prediction(qname, ref_name[scores[0].candidate_id], scores[0].probability) if scores \
            else Prediction(qname, "", 0.0)
    if cands and ("phash_resnet_lr" in wanted or "always_stage2" in wanted):
        rows = engine.index.get_rows(cands, ["phash", "resnet"])
        feats = {c: stage1_features(phash, np.asarray(rows[c]["phash"]), resnet, np.asarray(rows[c]["resnet"], np.float32))
                 for c in cands if c in rows}
        if "phash_resnet_lr" in wanted:
            best = max(feats, key=lambda c: cal.stage1.probability(feats[c]))
            preds["phash_resnet_lr"] = Prediction(qname, ref_name[best], cal.stage1.probability(feats[best]))
        if "always_stage2" in wanted:
            extra = engine.stage2_features(pic.image_id, list(feats))
            feats = {c: with_standins({**values, **extra.get(c, {})}) for c, values in feats.items()}
            best = max(feats, key=lambda c: cal.stage2.probability(feats[c]))
            preds["always_stage2"] = Prediction(qname, ref_name[best], cal.stage2.probability(feats[best]))
    for m in ("phash_resnet_lr", "always_stage2"):
        if m in wanted and m not in preds:
            preds[m] = Prediction(qname, "", 0.0)
    if "phash_only" in wanted or "peer_imagehash_phash" in wanted:
        i, d = _hamming_nn(phash, ref_phash)
        for m in ("phash_only", "peer_imagehash_phash"):
            preds[m] = Prediction(qname, ref_name[ref_ids[i]], -d)
    if "resnet_only" in wanted:
        sims = ref_resnet @ resnet
        i = int(np.argmax(sims))
        preds["resnet_only"] = Prediction(qname, ref_name[ref_ids[i]], float(sims[i]))
    if "peer_imagehash_dhash" in wanted:
        i, d = _hamming_nn(dhash, ref_dhash)
        preds["peer_imagehash_dhash"] = Prediction(qname, ref_name[ref_ids[i]], -d)
    if "peer_pdq" in wanted and pdq is not None:
        d = np.min(np.stack([np.count_nonzero(ref_pdq != v[None, :], axis=1) for v in pdq]), axis=0)
        i = int(np.argmin(d))
        preds["peer_pdq"] = Prediction(qname, ref_name[ref_ids[i]], -float(d[i]))
    keypoints = len(engine.local_features([pic.image_id]).get(pic.image_id, ()))
    return QueryResult(preds, hit, stage2_invoked, keypoints)


def _accuracy(results: dict[str, QueryResult], truth, family, wanted) -> dict[str, Any]:
    fams = sorted({family[q] for q in truth if truth[q]})
    negative = {family[q] for q in truth if not truth[q]}
    out: dict[str, Any] = {}
    for m in wanted:
        preds = [r.predictions[m] for r in results.values() if m in r.predictions]
        entry = {"overall": method_scores(preds, truth)}
        for f in fams:  # a family's copies plus all negatives: precision stays meaningful
            keep = {q for q in truth if family[q] == f or family[q] in negative}
            entry[f] = method_scores([p for p in preds if p.query in keep], {q: truth[q] for q in keep})
        out[m] = entry
    return out


def method_scores(preds, truth) -> dict[str, float]:
    return {"micro_ap": round(micro_ap(preds, truth), 4),
            "recall_at_p99": round(recall_at_precision(preds, truth, 0.99), 4),
            "recall_at_p95": round(recall_at_precision(preds, truth, 0.95), 4),
            "recall_at_1": round(recall_at_1(preds, truth), 4)}


# ---------------------------------------------------------------- speed
