"""Recalibration on audited labels, guarded: labels that contradict what the system knows are
dropped (or their auditor refused), and a candidate is promoted only if it is not worse than the
active calibration on held-out labels AND on the system's own check set."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import numpy as np

from .bootstrap import CheckSet
from .calibration import Calibration, evaluate, fit_calibration
from .features import STAGE2 as STAGE2_FEATURES
from .features import stage1_features, with_standins
from .labels import Label, load_labels

log = logging.getLogger(__name__)


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
        p1 = active.stage1.probability(stage1_features(np.asarray(a["phash"]), np.asarray(b["phash"]),
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


def recalibrate(engine, labels: Sequence[Label], active: Calibration,
                min_labels: int = 20, holdout: float = 0.3, seed: int = 0,
                check_set: IndexCheckSet | None = None) -> dict[str, Any]:
    """Fit a candidate on audited labels; compare with ``active``.

    Returns {"status": "skipped"|"promoted"|"rejected", "candidate": Calibration|None, "reasons": [...]}.
    Labels that contradict what the system knows for sure are dropped first (:func:`label_sanity`).
    The candidate is promoted only if it is not worse than the active calibration on the held-out
    labels (F1 and AP) and, with a ``check_set`` (the system's own attacked copies and negatives,
    :class:`IndexCheckSet`), not worse there either (recall, false positives).
    """
    settings = engine.settings
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
        pf = stage1_features(np.asarray(a["phash"]), np.asarray(b["phash"]),
                             np.asarray(a["resnet"], np.float32), np.asarray(b["resnet"], np.float32))
        # an unreadable picture: the registry's stand-ins (what an unrelated pair shows)
        pf = with_standins({**pf, **engine.stage2_features(lab.image_a, [lab.image_b], every=True).get(lab.image_b, {})})
        for f in STAGE2_FEATURES:
            feats[f].append(pf[f])
    arrays = {f: np.asarray(v) for f, v in feats.items()}
    test = holdout_mask(y, holdout, seed)
    train = ~test
    candidate = fit_calibration({f: v[train] for f, v in arrays.items()}, y[train], settings.weights_mode,
                                training={"source": "audited_labels", "labels": len(usable), "sift": settings.sift_params,
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
        checks = {"candidate": check_set.evaluate(candidate), "active": check_set.evaluate(active)}
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


class IndexCheckSet:
    """The system's own check set for a recalibration: attacked copies of indexed images decided
    unique, and negatives, in the active whitening's space (a :class:`~ndid_tasks.bootstrap.CheckSet`).
    Built on the first :meth:`evaluate`, so a skipped recalibration costs nothing."""

    def __init__(self, engine, images: int = CHECK_SET_IMAGES, seed: int = 0) -> None:
        self.settings, self.engine, self.images, self.seed = engine.settings, engine, images, seed
        self.check_set: CheckSet | None = None
        self.readable: int | None = None

    def _build(self) -> None:
        from .bootstrap import bootstrap_features_from_images
        from .refresh import MIN_BOOTSTRAP_IMAGES, sample_corpus

        ids, _ = sample_corpus(self.engine.index, 10 * self.images, self.seed)
        chosen = [ids[i] for i in np.random.default_rng(self.seed).permutation(len(ids))[:self.images]]
        pictures = self.engine.pictures(chosen)
        originals = [pictures[i] for i in chosen if i in pictures]
        self.readable = len(originals)
        if len(originals) >= MIN_BOOTSTRAP_IMAGES:
            self.check_set = bootstrap_features_from_images(self.settings, originals, copies=2, seed=self.seed,
                                                            whitening=self.engine.resnet.whitening).check_set

    def evaluate(self, cal: Calibration) -> dict[str, Any]:
        """Image-level precision, recall and false positives at the calibration's own threshold,
        or {"unavailable": why}."""
        from .refresh import MIN_BOOTSTRAP_IMAGES

        if self.readable is None:
            self._build()
        if self.check_set is None:
            return {"unavailable": f"the check set needs {MIN_BOOTSTRAP_IMAGES} readable indexed images "
                                   f"decided unique (have {self.readable})"}
        return self.check_set.evaluate(cal, self.settings.stage2_max_candidates, at_threshold=cal.threshold)


def _nan0(x: float) -> float:
    return 0.0 if math.isnan(x) else x


def recalibration_run(engine, run_id: str) -> dict[str, Any]:
    """Labels from S3 -> candidate fit -> comparison recorded -> promoted only if not worse."""
    settings = engine.settings
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
    result = recalibrate(engine, labels, active, min_labels=settings.recalibrate_min_labels,
                         check_set=IndexCheckSet(engine))
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
