"""Producing calibrations: bootstrap from synthetic pairs, and refits on audited labels.

Bootstrap positives are attacked copies of each image in a folder; negatives are other images of
the same folder, including each image's nearest ResNet neighbours (the hard, same-looking ones),
and same-scene pairs (two views of one photo that share no pixels).
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from . import augment
from .calibration import OPTIONAL_STAGE2, STAGE2_FEATURES, Calibration, evaluate, fit_calibration
from .config import Settings
from .decide import PDQ_BITS, pair_features
from .images import LoadedImage, load_image
from .labels import Label, load_labels
from .signals import ClipSignal, GeometricSignal, PDQSignal, PHashSignal, ResNetSignal
from .whitening import Whitening, fit_whitening

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def image_files(folder: str | Path, limit: int | None = None) -> list[Path]:
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return files[:limit] if limit else files


def _scene_sources(n: int) -> range:
    """Which of ``n`` originals give a same-scene pair: every sixth, all outside the check corpus."""
    return range(2, n, 6)


def _as_loaded(img, image_id: str) -> LoadedImage:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "PNG")
    return load_image(buf.getvalue(), image_id)


def bootstrap_features(settings: Settings, files: Sequence[Path], copies: int = 3, hard_negatives: int = 2,
                       seed: int = 0, progress: Callable[[int], None] | None = None,
                       whitening: Whitening | None = None,
                       ) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, Any], Whitening, Callable]:
    """Pair features and labels from attacked copies of ``files`` (synthetic; no audited labels).

    Without a given ``whitening`` one is fitted on these images and their copies (the corpus the
    calibration is for), then the pair features are measured in that whitened space."""
    originals: list[LoadedImage] = []
    for f in files:
        try:
            originals.append(load_image(f.read_bytes(), str(f)))
        except Exception as exc:  # noqa: BLE001 - skip unusable files, say so
            log.warning("bootstrap: skipping %s: %s", f, exc)
    return bootstrap_features_from_images(settings, originals, copies, hard_negatives, seed, progress, whitening)


def bootstrap_features_from_images(settings: Settings, originals: Sequence[LoadedImage], copies: int = 3,
                                   hard_negatives: int = 2, seed: int = 0,
                                   progress: Callable[[int], None] | None = None,
                                   whitening: Whitening | None = None, corpus_raw: np.ndarray | None = None,
                                   ) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, Any], Whitening, Callable]:
    """As :func:`bootstrap_features`, for decoded images; ``corpus_raw`` (raw descriptors of more
    corpus images) joins the whitening fit. The last element sets a calibration's threshold at
    the image level (see ``query_level`` inside)."""
    rng = np.random.default_rng(seed)
    originals = list(originals)
    if len(originals) < 3:
        raise ValueError(f"bootstrap needs at least 3 readable images, found {len(originals)}")
    copies_list: list[tuple[int, LoadedImage]] = []
    names = list(augment.BOOTSTRAP_ATTACKS)
    for i, orig in enumerate(originals):
        for c in range(copies):
            name = names[int(rng.integers(len(names)))]
            attacked = augment.BOOTSTRAP_ATTACKS[name](orig.image, rng)
            copies_list.append((i, _as_loaded(attacked, f"{orig.image_id}#copy{c}:{name}")))
        if progress:
            progress(1)
    # same-scene negatives (two views sharing no pixels) from every sixth image: near, not duplicate.
    # Cut from originals outside the check corpus below (i % 3 == 2): a view is a crop of its
    # original, so with the original indexed it would be a true partial copy, not a negative
    scene_views: list[LoadedImage] = []
    for i in _scene_sources(len(originals)):
        a, b = augment.same_scene_pair(originals[i].image, rng)
        scene_views += [_as_loaded(a, f"{originals[i].image_id}#scene-a"), _as_loaded(b, f"{originals[i].image_id}#scene-b")]
    everything = originals + [c for _, c in copies_list] + scene_views
    phash = PHashSignal().compute(everything)
    raw = ResNetSignal(settings).compute_raw(everything)
    if whitening is None:
        sample = raw if corpus_raw is None or not len(corpus_raw) else np.concatenate([corpus_raw, raw])
        whitening = fit_whitening(sample, settings.resnet_descriptor, settings.weights_mode, settings.whitening_dim,
                                  fitted_on={"source": "bootstrap" if corpus_raw is None else "index",
                                             "images": len(originals), "copies": len(copies_list),
                                             "corpus_descriptors": 0 if corpus_raw is None else len(corpus_raw)})
    resnet = ResNetSignal(settings, whitening=whitening).whiten(raw)
    clip = ClipSignal(settings).compute(everything)
    pdq = PDQSignal().dihedral(everything)
    geometry = GeometricSignal.from_settings(settings)
    local = geometry.compute(everything)

    n = len(originals)
    pairs: list[tuple[int, int, int]] = []  # (a, b, label) as indices into `everything`
    for k, (i, _) in enumerate(copies_list):
        pairs.append((i, n + k, 1))
    sims = resnet[:n] @ resnet[:n].T
    np.fill_diagonal(sims, -np.inf)
    for i in range(n):
        for j in np.argsort(-sims[i])[:hard_negatives]:
            pairs.append((i, int(j), 0))
        for j in rng.choice(n, size=min(2, n - 1), replace=False):
            if j != i:
                pairs.append((i, int(j), 0))
    for k, (i, _) in enumerate(copies_list):  # a copy against a different original
        j = int(rng.integers(n))
        if j != i:
            pairs.append((j, n + k, 0))
    first_scene = n + len(copies_list)
    for k in range(0, len(scene_views), 2):
        pairs.append((first_scene + k, first_scene + k + 1, 0))
    feats: dict[str, list[float]] = {f: [] for f in STAGE2_FEATURES}
    labels = []
    for a, b, label in pairs:
        pf = pair_features(phash[a], phash[b], resnet[a], resnet[b])
        pf["clip_cosine"] = float(np.dot(clip[a], clip[b]))
        pf["pdq_distance"] = PDQSignal.dihedral_distance(pdq[b], pdq[a]) / PDQ_BITS
        pf["log_inliers"] = float(np.log1p(geometry.verify(local[b], local[a])))
        for f in STAGE2_FEATURES:
            feats[f].append(pf[f])
        labels.append(label)
    summary = {"source": "bootstrap", "images": n, "copies_per_image": copies, "attacks": names,
               "hard_negatives_per_image": hard_negatives, "same_scene_negatives": len(scene_views) // 2,
               "seed": seed,
               "resnet_descriptor": settings.resnet_descriptor, "whitening": whitening.version}

    # image-level check set: a corpus of 2/3 of the originals (+ the first view of each scene);
    # queries = copies of corpus originals (positives), copies of the other originals without a
    # scene pair and the second scene views (negatives: near-looking, nothing to find). Copies of
    # a scene pair's source are not queried: they contain the first view, which is indexed.
    scene_sources = set(_scene_sources(n))
    corpus = [i for i in range(n) if i % 3 != 2] + list(range(first_scene, first_scene + len(scene_views), 2))
    queries = [(n + k, i if i % 3 != 2 else None) for k, (i, _) in enumerate(copies_list) if i not in scene_sources]
    queries += [(first_scene + k + 1, None) for k in range(0, len(scene_views), 2)]

    inliers_of: dict[tuple[int, int], float] = {}  # query_level runs once per candidate calibration

    def log_inliers(q: int, c: int) -> float:
        if (q, c) not in inliers_of:
            inliers_of[q, c] = float(np.log1p(geometry.verify(local[q], local[c])))
        return inliers_of[q, c]

    def query_level(cal: Calibration, stage2_max: int, min_precision: float = 0.99,
                    at_threshold: float | None = None) -> dict[str, Any]:
        """Top-1 decisions of every check query against the corpus, as the Matcher makes them
        (stage 1, verification of the best ``stage2_max`` pairs in the band); the threshold is the
        lowest whose image-level precision is >= ``min_precision`` and that no negative reaches --
        or, with ``at_threshold``, the decisions at that threshold are counted."""
        ph = np.asarray(phash, dtype=np.float32)
        scores, correct = [], []
        for q, target in queries:
            cands = []
            for c in corpus:
                pf = pair_features(ph[q], ph[c], resnet[q], resnet[c])
                cands.append((cal.stage1.probability(pf), c, pf))
            cands.sort(key=lambda t: -t[0])
            best, best_ref, verified = -1.0, -1, 0
            for p1, c, pf in cands:
                if cal.in_band(p1) and verified < stage2_max:
                    verified += 1
                    pf = {**pf, "clip_cosine": float(np.dot(clip[q], clip[c])),
                          "pdq_distance": PDQSignal.dihedral_distance(pdq[q], pdq[c]) / PDQ_BITS,
                          "log_inliers": log_inliers(q, c)}
                    p = cal.stage2.probability(pf)
                else:
                    p = min(p1, cal.band[0]) if cal.in_band(p1) else p1
                if p > best:
                    best, best_ref = p, c
            scores.append(best)
            correct.append(target is not None and best_ref == target)
        scores_a, correct_a = np.asarray(scores), np.asarray(correct)
        positives = sum(1 for _, t in queries if t is not None)
        threshold = None
        for t in np.sort(np.unique(scores_a)):
            taken = scores_a >= t
            if taken.any() and correct_a[taken].mean() >= min_precision:
                threshold = float(t)
                break
        if threshold is None:
            threshold = float(scores_a.max()) + 1e-6
        # and no negative query above it: in a stream most images are unique, so what matters is the
        # false-positive rate on them, which precision on a set of 3 positives per negative hides
        negative = np.array([t is None for _, t in queries])
        max_negative = float(scores_a[negative].max()) if negative.any() else 0.0
        if negative.any():
            threshold = max(threshold, float(np.nextafter(max_negative, np.inf)))
        if at_threshold is not None:
            threshold = at_threshold
        taken = scores_a >= threshold
        return {"threshold": threshold, "max_negative_score": max_negative, "queries": len(queries),
                "negatives": int(negative.sum()), "positives": positives,
                "false_positives": int((taken & ~correct_a).sum()),
                "precision": float(correct_a[taken].mean()) if taken.any() else 1.0,
                "recall": float(correct_a[taken].sum() / max(positives, 1)),
                "corpus": len(corpus), "stage2_max": stage2_max}

    return {f: np.asarray(v) for f, v in feats.items()}, np.asarray(labels), summary, whitening, query_level


def bootstrap_calibration(settings: Settings, folder: str | Path, limit: int | None = 200, copies: int = 3,
                          seed: int = 0, progress: Callable[[int], None] | None = None,
                          whitening: Whitening | None = None) -> tuple[Calibration, Whitening]:
    """A calibration and the whitening it was fitted with (fitted here too unless given)."""
    files = image_files(folder, limit)
    feats, labels, summary, whitening, query_level = bootstrap_features(
        settings, files, copies=copies, seed=seed, progress=progress, whitening=whitening)
    summary["folder"] = Path(folder).name
    return fit_bootstrapped(settings, feats, labels, summary, whitening, query_level, seed), whitening


def fit_bootstrapped(settings: Settings, feats: dict[str, np.ndarray], labels: np.ndarray, summary: dict[str, Any],
                     whitening: Whitening, query_level: Callable, seed: int = 0) -> Calibration:
    """The calibration of bootstrapped pairs: fitted, optional signals chosen per image
    (:func:`select_by_image_level`), threshold set per image (:func:`set_query_level_threshold`)."""
    def fit(stage2_features=None) -> Calibration:
        return fit_calibration(feats, labels, settings.weights_mode, training=summary, seed=seed,
                               whitening_version=whitening.version, stage2_features=stage2_features)

    cal = select_by_image_level(fit(), fit, query_level, settings)
    set_query_level_threshold(cal, query_level, settings)
    return cal


# image-level recall an optional signal must add to be computed on every ambiguous image. Not 0:
# it costs time -- PDQ cost 15 % of ingest throughput (13.3 -> 11.2 img/s) and added nothing to
# the dev benchmark's AP
IMAGE_LEVEL_GAIN = 0.02


def select_by_image_level(cal: Calibration, fit: Callable, query_level: Callable, settings: Settings) -> Calibration:
    """Second look at the optional stage-2 signals that the pair-level selection left out.

    Synthetic pairs are too easy to tell a signal's worth (held-out pair AP is 1.0 with or
    without CLIP or PDQ), while the product decides per image, from the best of many candidates.
    So each left-out signal is added in turn and kept if the check set's image-level recall (at
    its threshold: precision >= 0.99 and no negative above it; stored as
    ``image_level_recall_at_p99``) rises by at least :data:`IMAGE_LEVEL_GAIN`.
    """
    pair_level = dict(cal.metrics.get("stage2_selection", {}))
    best = query_level(cal, settings.stage2_max_candidates)
    tried: dict[str, float] = {}
    for signal in OPTIONAL_STAGE2:
        if signal in cal.stage2.features:
            continue
        names = [f for f in STAGE2_FEATURES if f in cal.stage2.features or f == signal]
        alt = fit(names)
        result = query_level(alt, settings.stage2_max_candidates)
        tried[signal] = round(result["recall"], 4)
        if result["recall"] >= best["recall"] + IMAGE_LEVEL_GAIN:
            cal, best = alt, result
    cal.metrics["stage2_selection"] = {
        **pair_level, "image_level_recall_at_p99": round(best["recall"], 4), "image_level_recall_adding": tried,
        "features": list(cal.stage2.features), "dropped": [f for f in OPTIONAL_STAGE2 if f not in cal.stage2.features]}
    return cal


def set_query_level_threshold(cal: Calibration, query_level: Callable, settings: Settings) -> None:
    """Replace the pair-level threshold by the image-level one: a decision takes the best of many
    candidate pairs, so a pair-level precision does not hold per image (measured: 0.99 -> 0.91)."""
    result = query_level(cal, settings.stage2_max_candidates)
    cal.metrics["pair_level_threshold"] = cal.threshold
    cal.metrics["query_level"] = result
    # above the band's lower edge: below it stage 1 has already said "not a duplicate"
    cal.threshold = max(result["threshold"], float(np.nextafter(cal.band[0], 1.0)))


def label_sanity(labels: Sequence[Label], rows: dict[str, dict[str, Any]], active: Calibration,
                 min_confident: int = 3, max_contradiction: float = 0.5) -> tuple[list[Label], dict[str, Any]]:
    """Labels that contradict what the system knows for sure are label errors, not training data.

    * an exact copy (same sha256) labelled "not duplicate" is an error;
    * an auditor whose labels contradict more than ``max_contradiction`` of the active
      calibration's confident calls (exact copies; stage-1 probability outside the ambiguous band),
      over at least ``min_confident`` of them, is refused as a whole (e.g. inverted labels).
    """
    confident_calls: dict[str, list[bool]] = {}
    errors: list[dict[str, str]] = []
    kept = []
    for lab in labels:
        a, b = rows[lab.image_a], rows[lab.image_b]
        exact = bool(a.get("sha256")) and a.get("sha256") == b.get("sha256")
        if exact and not lab.is_duplicate:
            errors.append({"image_a": lab.image_a, "image_b": lab.image_b, "auditor": lab.auditor,
                           "reason": "exact copy (same sha256) labelled not duplicate"})
        p1 = active.stage1.probability(pair_features(np.asarray(a["phash"]), np.asarray(b["phash"]),
                                                     np.asarray(a["resnet"], np.float32),
                                                     np.asarray(b["resnet"], np.float32)))
        call = True if exact else (False if p1 < active.band[0] else (True if p1 > active.band[1] else None))
        if call is not None:
            confident_calls.setdefault(lab.auditor, []).append(call == lab.is_duplicate)
        if not (exact and not lab.is_duplicate):
            kept.append(lab)
    refused = {}
    for auditor, agree in confident_calls.items():
        contradicted = agree.count(False)
        if len(agree) >= min_confident and contradicted / len(agree) > max_contradiction:
            refused[auditor] = f"contradicts {contradicted} of {len(agree)} confident calls (inverted labels?)"
    kept = [lab for lab in kept if lab.auditor not in refused]
    return kept, {"label_errors": errors, "refused_auditors": refused,
                  "confident_calls": {k: len(v) for k, v in confident_calls.items()}}


def holdout_mask(y: np.ndarray, holdout: float = 0.3, seed: int = 0) -> np.ndarray:
    """Which labels are held out for the comparison: every third example of each class, in a
    seeded shuffle, so both sides always see both classes."""
    order = np.random.default_rng(seed).permutation(len(y))
    test = np.zeros(len(y), dtype=bool)
    step = max(2, round(1 / holdout))
    for cls in (0, 1):
        idx = [i for i in order if y[i] == cls]
        test[idx[::step]] = True
    return test


def recalibrate(settings: Settings, engine, labels: Sequence[Label], active: Calibration,
                min_labels: int = 20, holdout: float = 0.3, seed: int = 0,
                check_set: Callable[[Calibration], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Fit a candidate on audited labels; compare with ``active``.

    Returns {"status": "skipped"|"promoted"|"rejected", "candidate": Calibration|None, "reasons": [...]}.
    Labels that contradict what the system knows for sure are dropped first (:func:`label_sanity`).
    The candidate is promoted only if it is not worse than the active calibration on the held-out
    labels (F1 and AP) and, with a ``check_set`` (the system's own attacked copies and negatives,
    :func:`check_set_from_index`), not worse there either (recall, false positives).
    """
    ids = sorted({i for lab in labels for i in (lab.image_a, lab.image_b)})
    rows = engine.index.get_rows(ids, ["phash", "resnet", "sha256"]) if ids else {}
    known = [lab for lab in labels if lab.image_a in rows and lab.image_b in rows]
    usable, sanity = label_sanity(known, rows, active)
    y = np.array([int(lab.is_duplicate) for lab in usable])
    if len(usable) < min_labels or len(set(y.tolist())) < 2:
        return {"status": "skipped", "candidate": None, "labels": len(labels), "usable": len(usable),
                "unknown_images": len(labels) - len(known), **sanity,
                "reason": f"need >= {min_labels} usable labels with both classes (have {len(usable)}, "
                          f"{int(y.sum()) if len(y) else 0} duplicates)"
                          + (f"; refused auditors: {sanity['refused_auditors']}" if sanity["refused_auditors"] else "")}
    feats: dict[str, list[float]] = {f: [] for f in STAGE2_FEATURES}
    for lab in usable:
        a, b = rows[lab.image_a], rows[lab.image_b]
        pf = pair_features(np.asarray(a["phash"]), np.asarray(b["phash"]),
                           np.asarray(a["resnet"], np.float32), np.asarray(b["resnet"], np.float32))
        pf.update(engine.stage2_features(lab.image_a, [lab.image_b], every=True).get(  # stand-ins if unreadable
            lab.image_b, {"clip_cosine": pf["resnet_cosine"], "pdq_distance": pf["phash_distance"], "log_inliers": 0.0}))
        for f in STAGE2_FEATURES:
            feats[f].append(pf[f])
    arrays = {f: np.asarray(v) for f, v in feats.items()}
    test = holdout_mask(y, holdout, seed)
    train = ~test
    candidate = fit_calibration({f: v[train] for f, v in arrays.items()}, y[train], settings.weights_mode,
                                training={"source": "audited_labels", "labels": len(usable),
                                          "auditors": sorted({lab.auditor for lab in usable})}, seed=seed,
                                whitening_version=active.whitening_version)  # features measured in its space
    held = {f: v[test] for f, v in arrays.items()}
    cand_eval, active_eval = evaluate(candidate, held, y[test]), evaluate(active, held, y[test])

    def f1(m):
        p, r = m["precision"], m["recall"]
        return 2 * p * r / (p + r) if p + r else 0.0

    reasons = []
    if f1(cand_eval) < f1(active_eval):
        reasons.append(f"held-out labels: F1 {f1(cand_eval):.3f} < active {f1(active_eval):.3f}")
    if _nan0(cand_eval["average_precision"]) < _nan0(active_eval["average_precision"]):
        reasons.append(f"held-out labels: AP {_nan0(cand_eval['average_precision']):.3f} < active "
                       f"{_nan0(active_eval['average_precision']):.3f}")
    checks: dict[str, Any] = {}
    if check_set is not None:
        checks = {"candidate": check_set(candidate), "active": check_set(active)}
        cand_cs, active_cs = checks["candidate"], checks["active"]
        if "unavailable" in cand_cs:  # no guard of the system's own: never promote blind
            reasons.append(f"no check set: {cand_cs['unavailable']}")
        else:
            if cand_cs["recall"] < active_cs["recall"] - CHECK_SET_RECALL_SLACK:
                reasons.append(f"check set: recall {cand_cs['recall']:.3f} < active {active_cs['recall']:.3f}")
            if cand_cs["false_positives"] > active_cs["false_positives"]:
                reasons.append(f"check set: {cand_cs['false_positives']} false positives > active "
                               f"{active_cs['false_positives']}")
    candidate.metrics = {**candidate.metrics, "heldout_labels": cand_eval,
                         **({"check_set": checks["candidate"]} if checks else {})}
    return {"status": "rejected" if reasons else "promoted", "reasons": reasons, "candidate": candidate,
            "labels": len(labels), "usable": len(usable), "unknown_images": len(labels) - len(known),
            "heldout": int(test.sum()), **sanity, "check_set": checks,
            "candidate_eval": {**cand_eval, "f1": f1(cand_eval)},
            "active_eval": {**active_eval, "f1": f1(active_eval)}, "active_version": active.version}


CHECK_SET_RECALL_SLACK = 0.02  # one query in 50: the check set is small
CHECK_SET_IMAGES = 60


def check_set_from_index(settings: Settings, engine, images: int = CHECK_SET_IMAGES,
                         seed: int = 0) -> Callable[[Calibration], dict[str, Any]]:
    """The system's own check set for a recalibration: attacked copies of indexed images decided
    unique, and negatives, in the active whitening's space. Returns evaluate(calibration) -> its
    image-level precision, recall and false positives at its own threshold (or {"unavailable":
    why}); the set is built on the first call, so a skipped recalibration costs nothing."""
    from .refresh import MIN_BOOTSTRAP_IMAGES, sample_corpus

    built: dict[str, Any] = {}

    def evaluate(cal: Calibration) -> dict[str, Any]:
        if not built:
            ids, _ = sample_corpus(engine.index, 10 * images, seed)
            chosen = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))[:images]]
            pictures = engine.pictures(chosen)
            originals = [pictures[i] for i in chosen if i in pictures]
            built["images"] = len(originals)
            if len(originals) >= MIN_BOOTSTRAP_IMAGES:
                built["query_level"] = bootstrap_features_from_images(
                    settings, originals, copies=2, seed=seed, whitening=engine.resnet.whitening)[-1]
        if "query_level" not in built:
            return {"unavailable": f"the check set needs {MIN_BOOTSTRAP_IMAGES} readable indexed images "
                                   f"decided unique (have {built['images']})"}
        return built["query_level"](cal, settings.stage2_max_candidates, at_threshold=cal.threshold)

    return evaluate


def _nan0(x: float) -> float:
    return 0.0 if math.isnan(x) else x


def recalibration_run(settings: Settings, engine, run_id: str) -> dict[str, Any]:
    """Labels from S3 -> candidate fit -> comparison recorded -> promoted only if not worse."""
    from .calibration_store import CalibrationStore
    from .ingest_run import safe_run_id
    from .pipeline import resolve_calibration
    from .storage import S3Store

    store = S3Store(settings)
    cal_store = CalibrationStore(settings, store)
    labels, errors = load_labels(store, settings.s3_labels_prefix)
    for e in errors[:50]:
        log.warning("label %s line %d skipped: %s", e.file, e.line, e.reason)
    active = resolve_calibration(settings)
    result = recalibrate(settings, engine, labels, active, min_labels=settings.recalibrate_min_labels,
                         check_set=check_set_from_index(settings, engine))
    result["label_file_errors"] = [asdict(e) for e in errors[:200]]
    result["label_file_error_count"] = len(errors)
    candidate = result.pop("candidate")
    result["run_id"] = run_id
    result["evaluated_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    if candidate is not None:
        candidate.version = f"labels-{candidate.version}"
        cal_store.save(candidate)
        result["candidate_version"] = candidate.version
        result["evaluation_key"] = cal_store.record_evaluation(candidate.version, result)
        if result["status"] == "promoted":
            cal_store.activate(candidate)
    else:  # recorded too, so the dashboard can say why a run changed nothing
        result["evaluation_key"] = cal_store.record_evaluation(f"skipped-{safe_run_id(run_id)}", result)
    log.info("recalibration: %s", {k: v for k, v in result.items() if k != "candidate_eval"})
    return result
