"""Matching: candidates for an image, per-pair features, the gated two-stage decision, the record.

    exact sha256 match ──▶ duplicate (stage "exact")
    else candidates = pHash range search (wide radius) ∪ ResNet top-K, all strictly earlier
         features per candidate ──▶ stage-1 LR ──▶ outside band: decided (stage "stage1")
                                                └─ inside band: + geometric verification
                                                   (+ CLIP cosine if the calibration uses it) ──▶ stage-2 LR
    best candidate with probability >= threshold ──▶ duplicate of that candidate's original
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .calibration import Calibration
from .index import ImageIndex, IndexedImage

log = logging.getLogger(__name__)

RECORD_SCHEMA = "ndid.decision/2"  # /2: stage "clip" -> "stage2", clip_pairs -> stage2_pairs
PHASH_CANDIDATES = 16  # most pHash neighbours taken from the radius search (nearest first)
SEARCH_SLACK = 8  # extra hits per batch search, for the batch's own later images (see candidates_many)
PHASH_BITS = 64.0
PDQ_BITS = 256


@dataclass
class PairScore:
    candidate_id: str
    features: dict[str, float]
    probability: float
    stage: str  # "stage1", "stage2" or "unverified" (in the band but beyond the verification cap)
    contributions: dict[str, float]


@dataclass
class DecisionRecord:
    """What NDID concluded about one object. Written as one JSON line."""

    id: str
    source: str
    decision: str  # duplicate | unique | error
    sha256: str = ""
    original_id: str = ""
    matched_id: str = ""
    probability: float = 0.0
    stage: str = ""  # exact | stage1 | stage2 | unverified | "" (unique with no candidates, or error)
    features: dict[str, float] = field(default_factory=dict)
    contributions: dict[str, float] = field(default_factory=dict)
    candidates: int = 0
    stage2_pairs: int = 0  # pairs sent to stage 2 (geometric verification, CLIP if calibrated); 0: none
    error_reason: str = ""
    error_message: str = ""
    calibration_version: str = ""
    weights_mode: str = ""
    untrained: bool = False
    run_id: str = ""
    created_at: str = ""  # when the object appeared (ISO)
    decided_at: str = ""  # the run's logical time (ISO), so a re-run writes identical records
    schema: str = RECORD_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pair_features(phash_a: np.ndarray, phash_b: np.ndarray, resnet_a: np.ndarray, resnet_b: np.ndarray) -> dict[str, float]:
    return {"phash_distance": float(np.count_nonzero(phash_a != phash_b)) / PHASH_BITS,
            "resnet_cosine": float(np.dot(resnet_a, resnet_b))}


class Matcher:
    """Decides images against the index with one calibration.

    ``stage2_features(query_id, candidate_ids)`` returns the expensive features (CLIP cosine,
    geometric inliers) per candidate; it is called only for pairs in the ambiguous band.
    """

    def __init__(self, index: ImageIndex, calibration: Calibration, phash_radius: int, top_k: int,
                 stage2_features: Callable[[str, list[str]], dict[str, dict[str, float]]],
                 threshold: float | None = None, band: tuple[float, float] | None = None,
                 stage2_max: int = 3,
                 decide_earlier: Callable[[str, dict[str, str]], str] | None = None) -> None:
        self.index = index
        self.cal = calibration
        self.radius = phash_radius
        self.top_k = top_k
        self.stage2_features = stage2_features
        self.threshold = calibration.threshold if threshold is None else threshold
        self.band = calibration.band if band is None else band
        self.stage2_max = stage2_max
        # names the original of an earlier image that is indexed but not decided yet (another task
        # of the run decides it): see resolve_original
        self.decide_earlier = decide_earlier
        self.stage2_pairs = 0
        self.pairs = 0
        self._rows: dict[str, dict[str, Any]] = {}  # candidate rows fetched ahead (see prefetch)
        self._exact: dict[str, str | None] = {}

    def prefetch(self, images: Sequence[IndexedImage], candidates: dict[str, list[str]]) -> None:
        """Fetch the candidates' vectors and the exact-copy answers of many images in a few calls
        (instead of two Milvus round trips per image)."""
        ids = list(dict.fromkeys(c for im in images for c in candidates.get(im.id, [])))
        self._rows = self.index.get_rows(ids, ["phash", "resnet"]) if ids else {}
        self._exact = self.index.earliest_with_sha256_many(images)

    def candidates(self, image: IndexedImage, before: bool = True) -> list[str]:
        return self.candidates_many([image], before)[image.id]

    def candidates_many(self, images: Sequence[IndexedImage], before: bool = True) -> dict[str, list[str]]:
        """pHash-radius ∪ ResNet top-K candidates for many images with two search calls.

        With ``before``, only images strictly earlier in ingestion order count. The batch search
        asks for :data:`SEARCH_SLACK` extra hits, room for the batch's own later images, which are
        filtered out afterwards; images that lost more than that (near-copies later in the same
        batch, or a young index) are searched again together with room for the whole batch -- so
        the result always equals a per-image search, while Milvus returns few hits (its cost grows
        with the hit count).
        """
        if not images:
            return {}
        slack = min(len(images), SEARCH_SLACK) if before else 0
        latest = max(im.created_at for im in images) if before else None
        searches = (("phash", PHASH_CANDIDATES, self.radius), ("resnet", self.top_k, None))
        found: dict[str, list[list[str]]] = {}

        def earlier(hits, im):
            key = (im.created_at, im.id)
            return [h.id for h in hits if h.id != im.id and (not before or (h.created_at, h.id) < key)]

        for kind, want, radius in searches:
            hits = self.index.search_many(kind, [getattr(im, kind) for im in images], want + slack, latest,
                                          radius=radius)
            found[kind] = [earlier(h, im) for h, im in zip(hits, images)]
            crowded = [n for n, (h, ok) in enumerate(zip(hits, found[kind]))
                       if before and len(ok) < want and len(h) == want + slack]
            if crowded:  # enough room for every later image of the batch: exact
                again = self.index.search_many(kind, [getattr(images[n], kind) for n in crowded],
                                               want + len(images), latest, radius=radius)
                for n, h in zip(crowded, again):
                    found[kind][n] = earlier(h, images[n])
        return {im.id: list(dict.fromkeys(found["phash"][n][:PHASH_CANDIDATES] + found["resnet"][n][:self.top_k]))
                for n, im in enumerate(images)}

    def _stage1(self, image: IndexedImage, candidate_ids: list[str]
                ) -> tuple[list[PairScore], list[tuple[str, dict[str, float]]]]:
        """Stage-1 scores of the confident pairs, and the ambiguous pairs (best first)."""
        missing = [c for c in candidate_ids if c not in self._rows]
        rows = {**self._rows, **(self.index.get_rows(missing, ["phash", "resnet"]) if missing else {})}
        scores: list[PairScore] = []
        ambiguous: list[tuple[str, dict[str, float]]] = []
        for cid in candidate_ids:
            row = rows.get(cid)
            if row is None:  # deleted between search and fetch
                continue
            feats = pair_features(np.asarray(image.phash), np.asarray(row["phash"], np.float32),
                                  np.asarray(image.resnet), np.asarray(row["resnet"], np.float32))
            p1 = self.cal.stage1.probability(feats)
            if self.band[0] <= p1 <= self.band[1]:
                ambiguous.append((cid, feats))
            else:
                scores.append(PairScore(cid, feats, p1, "stage1", self.cal.stage1.contributions(feats)))
        ambiguous.sort(key=lambda a: (-self.cal.stage1.probability(a[1]), a[0]))
        return scores, ambiguous

    def _unverified(self, cid: str, feats: dict[str, float]) -> PairScore:
        p1 = self.cal.stage1.probability(feats)
        return PairScore(cid, feats, min(p1, self.band[0]), "unverified", self.cal.stage1.contributions(feats))

    def stage2_plan(self, images: Sequence[IndexedImage], candidates: dict[str, list[str]]) -> dict[str, list[str]]:
        """Which candidates of each image will reach stage 2 (so their CLIP vectors and local
        features can be computed in batches first). Exact copies never need it."""
        plan = {}
        for im in images:
            if self._exact.get(im.id):
                continue
            chosen = [cid for cid, _ in self._stage1(im, candidates.get(im.id, []))[1][:self.stage2_max]]
            if chosen:
                plan[im.id] = chosen
        return plan

    def score(self, image: IndexedImage, candidate_ids: list[str]) -> list[PairScore]:
        if not candidate_ids:
            return []
        scores, ambiguous = self._stage1(image, candidate_ids)
        self.pairs += len(scores) + len(ambiguous)
        # only the most promising ambiguous pairs pay for verification; the others cannot be
        # accepted unverified: their probability is capped at the band's lower edge
        for cid, feats in ambiguous[self.stage2_max:]:
            scores.append(self._unverified(cid, feats))
        ambiguous = ambiguous[:self.stage2_max]
        extra = self.stage2_features(image.id, [cid for cid, _ in ambiguous]) if ambiguous else {}
        for cid, feats in ambiguous:
            more = extra.get(cid)
            if more is None:  # e.g. the candidate's source is gone: it cannot be verified
                scores.append(self._unverified(cid, feats))
                continue
            feats = {**feats, **more}
            self.stage2_pairs += 1
            scores.append(PairScore(cid, feats, self.cal.stage2.probability(feats), "stage2",
                                    self.cal.stage2.contributions(feats)))
        scores.sort(key=lambda s: (-s.probability, s.candidate_id))
        return scores

    def decide(self, image: IndexedImage, originals: dict[str, str],
               candidates: list[str] | None = None) -> DecisionRecord:
        """Decide one image. ``originals`` maps already-decided ids to their original (updated here);
        ``candidates`` may come precomputed from :meth:`candidates_many`."""
        record = DecisionRecord(id=image.id, source=image.source, decision="unique", sha256=image.sha256,
                                original_id=image.id)
        exact = (self._exact[image.id] if image.id in self._exact
                 else self.index.earliest_with_sha256(image.sha256, image.created_at, image.id))
        if exact is not None:
            record.decision, record.stage, record.probability = "duplicate", "exact", 1.0
            record.matched_id = exact
            record.features = {"sha256_equal": 1.0}
        else:
            cands = self.candidates(image) if candidates is None else candidates
            record.candidates = len(cands)
            scores = self.score(image, cands)
            if scores:
                best = scores[0]
                record.features, record.contributions = best.features, best.contributions
                record.probability, record.stage = best.probability, best.stage
                record.matched_id = best.candidate_id
                if best.probability >= self.threshold:
                    record.decision = "duplicate"
        if record.decision == "duplicate":
            record.original_id = self.resolve_original(record.matched_id, originals)
        else:
            record.matched_id = record.matched_id if record.probability > 0 else ""
        originals[image.id] = record.original_id
        return record

    def resolve_original(self, matched_id: str, originals: dict[str, str]) -> str:
        """The earliest member of the matched image's group (its recorded original, else itself).

        An earlier image that is indexed but not decided yet (its batch is decided by another task,
        which may run later or in parallel) is decided here first, so the original never depends on
        the order in which a run's tasks happen to run."""
        if matched_id in originals:
            return originals[matched_id]
        row = self.index.get_rows([matched_id], ["original_id", "decision"]).get(matched_id)
        if row is not None and not row.get("decision") and self.decide_earlier is not None:
            original = self.decide_earlier(matched_id, originals)
        else:
            original = (row or {}).get("original_id") or matched_id
        originals[matched_id] = original
        return original
