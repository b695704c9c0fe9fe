"""The benchmark: a Copydays-style folder format, its generator, and accuracy + speed measurement.

Folder format (bring your own, e.g. the real INRIA Copydays):
    refs/               the indexed corpus: originals + distractors
    queries/            attacked copies, plus negative queries that have no duplicate in refs
    ground_truth.csv    query,original,family,attack   (original empty for negatives)

The report prints figures; it never fails on thresholds.
"""

from __future__ import annotations

import csv
import json
import logging
import platform
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import augment
from .config import Settings
from .decide import Matcher
from .features import stage1_features, with_standins
from .images import ImageDecodeError, LoadedImage, image_files, load_image
from .index import IndexedImage
from .metrics import Prediction, micro_ap, operating_point, pr_curve, recall_at_1, recall_at_precision
from .pipeline import Engine, local_items

log = logging.getLogger(__name__)

METHODS = ("full", "phash_only", "resnet_only", "phash_resnet_lr", "always_stage2",
           "peer_imagehash_phash", "peer_imagehash_dhash", "peer_pdq")


# ---------------------------------------------------------------- generator

def make_benchmark(originals: str | Path, distractors: str | Path, out: str | Path, seed: int = 0,
                   max_originals: int | None = None, max_distractors: int | None = None,
                   negative_share: float = 0.3, hard_negative_share: float = 0.5) -> dict[str, Any]:
    """Attack every original once per family; hold some distractors out as negative queries.

    ``hard_negative_share`` of those negatives become *same-scene* pairs instead: one view goes into
    refs, the other (no shared pixels, see :func:`augment.same_scene_pair`) is a negative query."""
    rng = np.random.default_rng(seed)
    out = Path(out)
    refs, queries = out / "refs", out / "queries"
    for d in (refs, queries):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    origs = image_files(originals, max_originals)
    dists = image_files(distractors, max_distractors)
    order = rng.permutation(len(dists))
    n_neg = round(len(dists) * negative_share)
    n_hard = round(n_neg * hard_negative_share)
    negatives = [dists[i] for i in order[:n_neg - n_hard]]
    scenes = [dists[i] for i in order[n_neg - n_hard:n_neg]]
    ref_dists = [dists[i] for i in order[n_neg:]]
    rows = []
    for p in origs + ref_dists:
        shutil.copyfile(p, refs / p.name)
    overlay_pool = [Image.open(p).convert("RGB") for p in negatives[:20]]  # never indexed
    for p in scenes:
        view_a, view_b = augment.same_scene_pair(Image.open(p).convert("RGB"), rng)
        view_a.save(refs / f"scene__{p.stem}.jpg", "JPEG", quality=92)
        qname = f"hardneg__{p.stem}.jpg"
        view_b.save(queries / qname, "JPEG", quality=90)
        rows.append({"query": qname, "original": "", "family": "hard_negative", "attack": "same_scene"})
    extra_rng = np.random.default_rng([seed, 2])
    for p in origs:
        img = Image.open(p).convert("RGB")
        for family, attacks in augment.EXTRA_FAMILIES.items():
            name = next(iter(attacks))
            qname = f"{p.stem}__{family}__{name}.jpg"
            attacks[name](img, extra_rng).convert("RGB").save(queries / qname, "JPEG", quality=90)
            rows.append({"query": qname, "original": p.name, "family": family, "attack": name})
        for family, attacks in augment.FAMILIES.items():
            name = list(attacks)[int(rng.integers(len(attacks)))]
            attacked = attacks[name](img, rng)
            if family == "strong" and name == "text_overlay" and overlay_pool:
                attacked = augment.overlay_image(attacked, overlay_pool[int(rng.integers(len(overlay_pool)))], rng)
            qname = f"{p.stem}__{family}__{name}.jpg"
            attacked.convert("RGB").save(queries / qname, "JPEG", quality=90)
            rows.append({"query": qname, "original": p.name, "family": family, "attack": name})
    for p in negatives:
        qname = f"neg__{p.stem}.jpg"
        Image.open(p).convert("RGB").save(queries / qname, "JPEG", quality=90)
        rows.append({"query": qname, "original": "", "family": "negative", "attack": "none"})
    with open(out / "ground_truth.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["query", "original", "family", "attack"])
        writer.writeheader()
        writer.writerows(rows)
    summary = {"refs": len(origs) + len(ref_dists) + len(scenes), "originals": len(origs),
               "distractors_in_refs": len(ref_dists), "queries": len(rows), "negative_queries": len(negatives),
               "hard_negative_queries": len(scenes), "families": [*augment.FAMILIES, *augment.EXTRA_FAMILIES],
               "seed": seed, "folder": str(out)}
    (out / "benchmark.json").write_text(json.dumps(summary, indent=2))
    return summary


def read_ground_truth(folder: Path) -> list[dict[str, str]]:
    with open(folder / "ground_truth.csv", newline="") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------- evaluation

@dataclass
class QueryResult:
    predictions: dict[str, Prediction]
    candidate_hit: bool
    stage2_invoked: bool


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
    settings = settings.replace(milvus_uri=str(db), milvus_collection_prefix="bench")
    gt = read_ground_truth(folder)
    truth = {r["query"]: r["original"] for r in gt}
    family = {r["query"]: r["family"] for r in gt}
    engine = Engine(settings)
    report: dict[str, Any] = {"folder": str(folder), "weights_mode": settings.weights_mode,
                              "untrained": settings.untrained, "machine": machine(), "settings": {
                                  k: v for k, v in settings.public_dict().items()
                                  if k in ("phash_radius", "resnet_top_k", "milvus_hnsw_ef", "precision",
                                           "embed_batch_size", "resnet_layer", "resnet_gem_p", "resnet_input",
                                           "resnet_flip_symmetric", "whitening_dim", "stage2_max_candidates")},
                              "started_at": datetime.now(UTC).isoformat(timespec="seconds")}
    try:
        # --- index the refs: the end-to-end ingest path, timed
        items = local_items([folder / "refs"])
        rss0 = _peak_rss_mb()
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
        report["speed"] = _speed(engine, loaded_refs, ingest_s, len(items), rss0)
        from .pipeline import summarize

        report["speed"]["startup_s"] = round(startup_s, 2)
        report["speed"]["stage2_share_at_ingest"] = round(summarize(ingest_records)["stage2_share"], 3)
        if fit_whitening:  # the corpus-specific whitening + calibration, as `ndid whitening fit` makes them
            from .refresh import refresh_whitening

            refreshed = refresh_whitening(engine, activate=False)
            cal, whitening = refreshed.pop("_calibration"), refreshed.pop("_whitening")
            report["whitening_refresh"] = refreshed
            engine.close()
            engine = Engine(settings, calibration=cal, whitening=whitening)
        rows = engine.index.get_rows(ref_ids, ["phash", "resnet"])
        ref_phash = np.array([rows[i]["phash"] for i in ref_ids], dtype=np.float32)
        ref_resnet = np.array([rows[i]["resnet"] for i in ref_ids], dtype=np.float32)
        ref_dhash = np.array([imagehash.dhash(im.image).hash.flatten() for im in loaded_refs])
        ref_pdq = np.concatenate(_pdq(loaded_refs, dihedral=False)) if "peer_pdq" in wanted else None

        # --- queries
        qfiles = [folder / "queries" / r["query"] for r in gt]
        cal = engine.calibration
        matcher = engine.matcher()
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
        report["stage2_share_of_queries"] = sum(results[q].stage2_invoked for q in results) / max(len(results), 1)
        report["candidate_recall"] = {
            fam: sum(results[q].candidate_hit for q in positives if family[q] == fam) /
            max(1, sum(1 for q in positives if family[q] == fam))
            for fam in sorted({family[q] for q in positives})}
        report["calibration_version"] = cal.version
    finally:
        engine.close()
    report["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    write_report(report, results, truth, family, out, wanted)
    return report


def _evaluate_query(qname, pic, phash, resnet, dhash, pdq, matcher: Matcher, cal, engine, ref_ids, ref_name,
                    ref_phash, ref_resnet, ref_dhash, ref_pdq, truth, wanted) -> QueryResult:
    preds: dict[str, Prediction] = {}
    image = IndexedImage(id=pic.image_id, sha256=pic.sha256, source="", width=pic.width, height=pic.height,
                         num_bytes=pic.num_bytes, created_at=0, phash=phash, resnet=resnet)
    cands = matcher.candidates(image, before=False)
    turned = matcher.turned_candidates_many([image], before=False).get(image.id, [])
    hit = bool(truth[qname]) and any(ref_name.get(c) == truth[qname] for c in cands + [c for c, _ in turned])
    stage2_invoked = False
    if "full" in wanted:
        before = matcher.stage2_pairs
        scores = matcher.rank(image, cands, turned, before=False)
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
    return QueryResult(preds, hit, stage2_invoked)


def _accuracy(results: dict[str, QueryResult], truth, family, wanted) -> dict[str, Any]:
    fams = sorted({family[q] for q in truth if truth[q]})
    negative = {family[q] for q in truth if not truth[q]}
    out: dict[str, Any] = {}
    for m in wanted:
        preds = [r.predictions[m] for r in results.values() if m in r.predictions]
        entry = {"overall": _scores(preds, truth)}
        for f in fams:  # a family's copies plus all negatives: precision stays meaningful
            keep = {q for q in truth if family[q] == f or family[q] in negative}
            entry[f] = _scores([p for p in preds if p.query in keep], {q: truth[q] for q in keep})
        out[m] = entry
    return out


def _scores(preds, truth) -> dict[str, float]:
    return {"micro_ap": round(micro_ap(preds, truth), 4),
            "recall_at_p99": round(recall_at_precision(preds, truth, 0.99), 4),
            "recall_at_p95": round(recall_at_precision(preds, truth, 0.95), 4),
            "recall_at_1": round(recall_at_1(preds, truth), 4)}


# ---------------------------------------------------------------- speed

def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _speed(engine: Engine, pics: list[LoadedImage], ingest_s: float, n: int,
           rss_before: float) -> dict[str, Any]:
    """End-to-end ingest next to the bare ResNet-50 forward pass on the same images."""
    settings = engine.settings
    import torch

    from .signals import TorchEmbeddingSignal
    from .weights import build_resnet50

    class BareResNet50(TorchEmbeddingSignal):  # the whole network, classifier removed, 224 centre crop
        name, dim = "bare_resnet50", 2048

        def _build(self):
            return build_resnet50(self.settings)

    bare_signal = BareResNet50(settings, precision=engine.resnet.precision)
    model = bare_signal.model
    dtype = torch.bfloat16 if bare_signal.precision == "bf16" else torch.float32
    bs = settings.embed_batch_size
    tensors = [bare_signal.preprocess(pics[s:s + bs]).to(dtype).contiguous(memory_format=torch.channels_last)
               for s in range(0, len(pics), bs)]
    def throughput(net) -> float:
        with torch.inference_mode():
            net(tensors[0])  # warm-up
            t0 = time.perf_counter()
            for x in tensors:
                net(x)
            return len(pics) / (time.perf_counter() - t0)

    from .signals import fuse_batchnorm

    # torchvision's ResNet-50 as it ships: the reference of the target. Median of three passes:
    # single passes of the same code ranged 14-20 img/s on a shared VM
    bare_runs = [throughput(model) for _ in range(3)]
    bare = float(np.median(bare_runs))
    fuse_batchnorm(getattr(model, "_orig_mod", model))  # stricter reference: BatchNorm folded (as NDID does)
    bare_fused = throughput(model)
    e2e = n / ingest_s
    timings = {k: round(v, 2) for k, v in engine.timings.items()}
    db = Path(settings.resolved_milvus_uri)
    disk = sum(f.stat().st_size for f in db.rglob("*") if f.is_file()) if db.is_dir() else (
        db.stat().st_size if db.exists() else 0)
    resnet_stage = n / engine.timings["resnet_s"] if engine.timings.get("resnet_s") else 0.0
    return {"images": n, "ingest_images_per_s": round(e2e, 2), "bare_resnet50_images_per_s": round(bare, 2),
            "bare_resnet50_runs": [round(b, 2) for b in bare_runs],
            "ndid_resnet_stage_images_per_s": round(resnet_stage, 2),
            "bare_resnet50_bn_folded_images_per_s": round(bare_fused, 2),
            "ingest_to_bn_folded_ratio": round(e2e / bare_fused, 3),
            "ingest_to_bare_ratio": round(e2e / bare, 3), "precision": engine.resnet.precision,
            "stage_seconds": timings, "peak_rss_mb": round(_peak_rss_mb(), 0),
            "rss_growth_mb": round(_peak_rss_mb() - rss_before, 0),
            "index_vector_bytes_per_image": (64 + engine.resnet.dim) * 4,
            "index_raw_descriptor_bytes_per_image": engine.resnet.raw_dim * 4,
            "resnet_descriptor": settings.resnet_descriptor,
            "whitening": engine.resnet.whitening.version if engine.resnet.whitening else "none",
            "index_disk_bytes_per_image": round(disk / max(n, 1)), "torch_threads": torch.get_num_threads()}


def machine() -> dict[str, Any]:
    import os

    import torch

    cpu = ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform()}


# ---------------------------------------------------------------- report

def write_report(report: dict[str, Any], results, truth, family, out: Path, wanted) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=2))
    _plots(results, truth, family, out, wanted, report)
    (out / "report.md").write_text(markdown(report))
    report["markdown"] = str(out / "report.md")


def markdown(r: dict[str, Any]) -> str:
    lines = [f"# NDID benchmark — {'UNTRAINED (random weights)' if r['untrained'] else 'pretrained weights'}",
             "", (f"folder `{r['folder']}`, calibration `{r.get('calibration_version')}`, "
                  f"machine: {r['machine']['cpu']} ({r['machine']['cores']} cores), torch {r['machine']['torch']}"),
             "", "## Accuracy (top-1 per query, one global threshold)", "",
             "| method | micro-AP | R@P99 | R@P95 | R@1 |", "|---|---|---|---|---|"]
    for m, e in r["accuracy"].items():
        o = e["overall"]
        lines.append(f"| {m} | {o['micro_ap']:.3f} | {o['recall_at_p99']:.3f} | {o['recall_at_p95']:.3f} | "
                     f"{o['recall_at_1']:.3f} |")
    fams = [k for k in next(iter(r["accuracy"].values())) if k != "overall"]
    lines += ["", "### Per family (micro-AP / R@P99 / R@1; each family with all negatives)", "",
              "| method | " + " | ".join(fams) + " |", "|---|" + "---|" * len(fams)]
    for m, e in r["accuracy"].items():
        lines.append(f"| {m} | " + " | ".join(
            f"{e[f]['micro_ap']:.2f} / {e[f]['recall_at_p99']:.2f} / {e[f]['recall_at_1']:.2f}" for f in fams) + " |")
    op = r.get("operating_point") or {}
    if op:
        lines += ["", (f"**Shipped calibration's operating point** (threshold {op['threshold']:.3f}): precision "
                       f"{op['precision']:.3f}, recall {op['recall']:.3f}, false positives {op['false_positives']} "
                       f"({op['false_positives_on_negatives']} on {op['negatives']} negative queries).")]
    hn = r.get("hard_negatives")
    if hn:
        lines += ["", f"**Hard negatives** (same scene, no shared pixels; {hn['queries']} queries): "
                      f"{hn['full_false_positives']} called duplicate by the full pipeline at its threshold; "
                      f"top scores " + ", ".join(f"{m} {v}" for m, v in hn["max_score"].items()) + "."]
    wr = r.get("whitening_refresh")
    if wr:
        lines += ["", (f"Queries answered with a whitening + calibration fitted on the indexed refs "
                      f"(`--fit-whitening`): whitening {wr['whitening']}, calibration {wr['calibration']}, "
                      f"{wr['corpus_descriptors']} corpus descriptors + {wr['bootstrap_images']} images with attacked "
                      f"copies, re-indexed {wr['reindex'].get('rows')} rows in {wr['seconds']} s.")]
    lines += [f"Stage 2 (verification, CLIP if calibrated) invoked for {100 * r['stage2_share_of_queries']:.1f} % of queries. Candidate recall per family: "
              + ", ".join(f"{k} {v:.3f}" for k, v in r["candidate_recall"].items()) + "."]
    s = r["speed"]
    lines += ["", "## Speed", "", "| figure | value |", "|---|---|",
              f"| end-to-end ingest (decode → signals → upsert → decide) | {s['ingest_images_per_s']} img/s |",
              f"| once per process, not in the figure above (build ResNet-50, start Milvus Lite) | {s.get('startup_s')} s |",
              f"| bare ResNet-50 forward ({s['precision']}, same images, same run; median of {s.get('bare_resnet50_runs')}) | {s['bare_resnet50_images_per_s']} img/s |",
              f"| NDID's ResNet stage in that ingest (preprocessing, layer3 GeM, whitening) | {s.get('ndid_resnet_stage_images_per_s')} img/s |",
              f"| ingest / bare model | **{s['ingest_to_bare_ratio']}** |",
              (f"| bare ResNet-50 with BatchNorm folded (stricter reference; NDID folds it too) | "
              f"{s.get('bare_resnet50_bn_folded_images_per_s')} img/s → ratio {s.get('ingest_to_bn_folded_ratio')} |"),
              f"| refs that reached stage 2 while being ingested | {100 * s.get('stage2_share_at_ingest', 0):.1f} % |",
              f"| query latency p50 / p95 | {r['query_latency_ms']['p50']} / {r['query_latency_ms']['p95']} ms |",
              f"| peak RSS | {s['peak_rss_mb']} MB |",
              (f"| index: searched vector bytes / image (+ raw descriptor kept for re-whitening; disk bytes / image) "
              f"| {s['index_vector_bytes_per_image']} (+{s.get('index_raw_descriptor_bytes_per_image', 0)}; "
              f"{s['index_disk_bytes_per_image']}) |"),
              f"| descriptor / whitening | {s.get('resnet_descriptor')} / {s.get('whitening')} |",
              f"| stage seconds | {s['stage_seconds']} |", "",
              "![PR curves](pr_curves.png)", "", "![per family](families.png)", ""]
    return "\n".join(lines)


def _plots(results, truth, family, out: Path, wanted, report) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tag = " (UNTRAINED weights)" if report["untrained"] else ""
    fig, ax = plt.subplots(figsize=(7, 5))
    for m in wanted:
        p, r, _ = pr_curve([res.predictions[m] for res in results.values() if m in res.predictions], truth)
        ax.plot(r, p, label=f"{m} (AP {report['accuracy'][m]['overall']['micro_ap']:.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_ylim(0, 1.02)
    ax.set_title("Top-1 precision/recall" + tag)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(out / "pr_curves.png", dpi=110)
    plt.close(fig)
    fams = [k for k in next(iter(report["accuracy"].values())) if k != "overall"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / max(len(wanted), 1)
    for i, m in enumerate(wanted):
        ax.bar(np.arange(len(fams)) + i * width, [report["accuracy"][m][f]["recall_at_p99"] for f in fams],
               width, label=m)
    ax.set_xticks(np.arange(len(fams)) + 0.4 - width / 2, fams)
    ax.set_ylabel("recall at precision 0.99")
    ax.set_title("Per attack family" + tag)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "families.png", dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- descriptor ablation

def descriptor_ablation(settings: Settings, folder: str | Path, out: str | Path,
                        progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """The ResNet-50 descriptor levers alone (no pHash, no verification): input framing, layer,
    GeM vs average pooling, flip symmetry, whitening. Nearest neighbour by cosine over refs; the
    whitening is fitted on the refs and their mirrors (the indexed corpus), never on queries."""
    import torch

    from .signals import ResNetSignal, gem_pool, mirrored
    from .weights import build_resnet50
    from .whitening import fit_whitening, l2_normalise

    folder, out = Path(folder), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    gt = read_ground_truth(folder)
    truth = {r["query"]: r["original"] for r in gt}
    family = {r["query"]: r["family"] for r in gt}
    ref_paths = sorted((folder / "refs").iterdir())
    paths = ref_paths + [folder / "queries" / r["query"] for r in gt]
    pics = [load_image(p.read_bytes(), p.name) for p in paths]
    n_refs = len(ref_paths)
    # pooled descriptors per (input, layer, p, mirrored): one forward pass per input and mirror
    parts: dict[tuple[str, str, float, bool], list[np.ndarray]] = {}
    layer4 = build_resnet50(settings).layer4.eval()  # the same (seeded or pretrained) weights
    for framing in ("center_crop", "squash"):
        signal = ResNetSignal(settings.replace(resnet_input=framing, resnet_layer="layer3"))
        body = signal.model  # conv1 .. layer3
        for flipped in (False, True):
            for start in range(0, len(pics), settings.embed_batch_size):
                batch = pics[start:start + settings.embed_batch_size]
                if flipped:
                    batch = mirrored(batch)
                dtype = next(body.parameters()).dtype
                with torch.inference_mode():
                    f3 = body.body(signal.preprocess(batch).to(dtype).contiguous(memory_format=torch.channels_last))
                    f4 = layer4(f3.float())
                for layer, fmap in (("layer3", f3), ("layer4", f4)):
                    for p in (1.0, 3.0):
                        parts.setdefault((framing, layer, p, flipped), []).append(gem_pool(fmap, p).numpy())
                if progress:
                    progress(len(batch))
    pooled = {k: np.concatenate(v) for k, v in parts.items()}
    rows = []
    ref_name = [p.name for p in ref_paths]
    queries = [r["query"] for r in gt]
    for framing, layer, p in [(f, layer, p) for f in ("center_crop", "squash") for layer in ("layer4", "layer3")
                              for p in (1.0, 3.0)]:
        for flip in (False, True):
            raw = l2_normalise(pooled[(framing, layer, p, False)] + (pooled[(framing, layer, p, True)] if flip else 0))
            for white in (0, 256):
                if white:
                    fit = np.concatenate([raw[:n_refs], l2_normalise(pooled[(framing, layer, p, True)][:n_refs]
                                                                     + (pooled[(framing, layer, p, False)][:n_refs] if flip else 0))])
                    w = fit_whitening(fit, "ablation", settings.weights_mode, dim=white)
                    vec = w.apply(raw)
                else:
                    vec = raw
                sims = vec[n_refs:] @ vec[:n_refs].T
                best = np.argmax(sims, axis=1)
                preds = [Prediction(q, ref_name[best[k]], float(sims[k, best[k]])) for k, q in enumerate(queries)]
                top10 = np.argsort(-sims, axis=1)[:, :10]
                row = {"input": framing, "layer": layer, "pooling": "avg" if p == 1.0 else f"gem{p:g}",
                       "flip_symmetric": flip, "whitening": f"pca{white}" if white else "none",
                       "dims": vec.shape[1], **_scores(preds, truth)}
                for fam in sorted({family[q] for q in queries if truth[q]}):
                    idx = [k for k, q in enumerate(queries) if family[q] == fam]
                    row[f"{fam}_r1"] = round(float(np.mean([ref_name[best[k]] == truth[queries[k]] for k in idx])), 3)
                    row[f"{fam}_candidates10"] = round(float(np.mean(
                        [truth[queries[k]] in {ref_name[j] for j in top10[k]} for k in idx])), 3)
                rows.append(row)
    report = {"folder": str(folder), "weights_mode": settings.weights_mode, "untrained": settings.untrained,
              "rows": rows, "machine": machine()}
    (out / "descriptors.json").write_text(json.dumps(report, indent=2))
    fams = sorted({family[q] for q in queries if truth[q]})
    lines = [f"# ResNet-50 descriptor ablation — {'UNTRAINED (random weights)' if settings.untrained else 'pretrained'}",
             "", ("Nearest neighbour by cosine, descriptor alone (no pHash, no verification); whitening "
                 "fitted on refs + their mirrors."), "",
             "| input | layer | pooling | flip-sym | whitening | micro-AP | R@P99 | R@1 | " +
             " | ".join(f"{f} R@1 / cand@10" for f in fams) + " |", "|---" * (8 + len(fams)) + "|"]
    for r in rows:
        lines.append(f"| {r['input']} | {r['layer']} | {r['pooling']} | {'yes' if r['flip_symmetric'] else 'no'} | "
                     f"{r['whitening']} | {r['micro_ap']:.3f} | {r['recall_at_p99']:.3f} | {r['recall_at_1']:.3f} | "
                     + " | ".join(f"{r[f + '_r1']:.2f} / {r[f + '_candidates10']:.2f}" for f in fams) + " |")
    (out / "descriptors.md").write_text("\n".join(lines) + "\n")
    report["markdown"] = str(out / "descriptors.md")
    return report
