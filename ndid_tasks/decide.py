"""Matching: candidates for an image, per-pair features, the gated two-stage decision, the record.

    exact sha256 match ──▶ duplicate (stage "exact")
    else candidates = pHash range search (wide radius) ∪ ResNet top-K, all strictly earlier
         features per candidate ──▶ stage-1 LR ──▶ outside band: decided (stage "stage1")
                                                └─ inside band: + CLIP cosine ──▶ stage-2 LR ("clip")
    best candidate with probability >= threshold ──▶ duplicate of that candidate's original
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from .calibration import Calibration
from .index import ImageIndex, IndexedImage

log = logging.getLogger(__name__)

RECORD_SCHEMA = "ndid.decision/1"
PHASH_BITS = 64.0


@dataclass
class PairScore:
    candidate_id: str
    features: dict[str, float]
    probability: float
    stage: str  # "stage1" or "clip"
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
    stage: str = ""  # exact | stage1 | clip | "" (unique with no candidates, or error)
    features: dict[str, float] = field(default_factory=dict)
    contributions: dict[str, float] = field(default_factory=dict)
    candidates: int = 0
    clip_pairs: int = 0  # candidate pairs that needed CLIP (0: CLIP not invoked for this image)
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

    ``clip_vectors(ids)`` returns CLIP vectors for image ids (from the CLIP collection, computing
    and storing the missing ones); it is called only for pairs in the ambiguous band.
    """

    def __init__(self, index: ImageIndex, calibration: Calibration, phash_radius: int, top_k: int,
                 clip_vectors: Callable[[list[str]], dict[str, np.ndarray]],
                 threshold: float | None = None, band: tuple[float, float] | None = None) -> None:
        self.index = index
        self.cal = calibration
        self.radius = phash_radius
        self.top_k = top_k
        self.clip_vectors = clip_vectors
        self.threshold = calibration.threshold if threshold is None else threshold
        self.band = calibration.band if band is None else band
        self.clip_pairs = 0
        self.pairs = 0

    def candidates(self, image: IndexedImage, before: bool = True) -> list[str]:
        kw = {"created_at": image.created_at, "image_id": image.id} if before else {}
        ids = [h.id for h in self.index.phash_neighbours(image.phash, self.radius, **kw)]
        ids += [h.id for h in self.index.resnet_neighbours(image.resnet, self.top_k, **kw)]
        return [i for i in dict.fromkeys(ids) if i != image.id]

    def score(self, image: IndexedImage, candidate_ids: list[str]) -> list[PairScore]:
        if not candidate_ids:
            return []
        rows = self.index.get_rows(candidate_ids, ["phash", "resnet"])
        scores: list[PairScore] = []
        ambiguous: list[tuple[str, dict[str, float]]] = []
        for cid in candidate_ids:
            row = rows.get(cid)
            if row is None:  # deleted between search and fetch
                continue
            feats = pair_features(np.asarray(image.phash), np.asarray(row["phash"], np.float32),
                                  np.asarray(image.resnet), np.asarray(row["resnet"], np.float32))
            p1 = self.cal.stage1.probability(feats)
            self.pairs += 1
            if self.band[0] <= p1 <= self.band[1]:
                ambiguous.append((cid, feats))
            else:
                scores.append(PairScore(cid, feats, p1, "stage1", self.cal.stage1.contributions(feats)))
        if ambiguous:
            vectors = self.clip_vectors([image.id] + [cid for cid, _ in ambiguous])
            query_vec = vectors.get(image.id)
            for cid, feats in ambiguous:
                cand_vec = vectors.get(cid)
                if query_vec is None or cand_vec is None:  # e.g. the candidate's source is gone
                    p1 = self.cal.stage1.probability(feats)
                    scores.append(PairScore(cid, feats, p1, "stage1", self.cal.stage1.contributions(feats)))
                    continue
                feats = {**feats, "clip_cosine": float(np.dot(query_vec, cand_vec))}
                self.clip_pairs += 1
                scores.append(PairScore(cid, feats, self.cal.stage2.probability(feats), "clip",
                                        self.cal.stage2.contributions(feats)))
        scores.sort(key=lambda s: (-s.probability, s.candidate_id))
        return scores

    def decide(self, image: IndexedImage, originals: dict[str, str]) -> DecisionRecord:
        """Decide one image. ``originals`` maps already-decided ids to their original (updated here)."""
        record = DecisionRecord(id=image.id, source=image.source, decision="unique", sha256=image.sha256,
                                original_id=image.id)
        exact = self.index.earliest_with_sha256(image.sha256, image.created_at, image.id)
        if exact is not None:
            record.decision, record.stage, record.probability = "duplicate", "exact", 1.0
            record.matched_id = exact
            record.features = {"sha256_equal": 1.0}
        else:
            cands = self.candidates(image)
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
        """The earliest member of the matched image's group (its recorded original, else itself)."""
        if matched_id in originals:
            return originals[matched_id]
        row = self.index.get_rows([matched_id], ["original_id"]).get(matched_id)
        original = (row or {}).get("original_id") or matched_id
        originals[matched_id] = original
        return original
