"""The pair features the decision model reads: one registry, from which everything else follows.

Each feature says which stage reads it, which signal measures it, whether a calibration may drop
it (optional: kept only where it pays, see calibration / calibrate), and its **stand-in**: the
value used where it cannot be measured (a source that is gone, an unreadable picture). Stand-ins
are what an unrelated pair shows, so a missing measurement never argues for "duplicate".

The calibration's feature order (stage 1, stage 2), the optional-signal selection, the bootstrap
pairs, audited-label pairs and the benchmark's ablations all take their names from here; adding a
pair feature is one entry below plus its signal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairFeature:
    name: str
    stage: int  # 1: measured for every candidate; 2: only for pairs in the ambiguous band
    signal: str  # the signal that measures it (ndid_tasks.signals)
    standin: float  # where it cannot be measured: what an unrelated pair shows
    optional: bool  # a calibration keeps it only if it adds held-out AP or image-level recall
    meaning: str


REGISTRY: tuple[PairFeature, ...] = (
    PairFeature("phash_distance", 1, "phash", 0.5, False, "Hamming distance of the 64-bit pHashes / 64"),
    PairFeature("resnet_cosine", 1, "resnet", 0.0, False, "cosine of the whitened ResNet-50 descriptors"),
    PairFeature("clip_cosine", 2, "clip", 0.0, True, "cosine of the CLIP ViT-B-32 image embeddings"),
    PairFeature("pdq_distance", 2, "pdq", 0.5,  True,
                "smallest PDQ Hamming distance over the query's 8 rotations/flips / 256"),
    PairFeature("log_inliers", 2, "geometry", 0.0, False, "log(1 + distinct RANSAC inliers of the SIFT matches)"),
)
BY_NAME = {f.name: f for f in REGISTRY}
STAGE1 = tuple(f.name for f in REGISTRY if f.stage == 1)
STAGE2 = tuple(f.name for f in REGISTRY)  # stage 2 reads every feature (the optional ones where kept)
OPTIONAL = tuple(f.name for f in REGISTRY if f.optional)
BASE_STAGE2 = tuple(f.name for f in REGISTRY if not f.optional)
EXPENSIVE = tuple(f.name for f in REGISTRY if f.stage == 2)  # measured only for verified pairs


def stage1_features(phash_a: np.ndarray, phash_b: np.ndarray, resnet_a: np.ndarray, resnet_b: np.ndarray
                    ) -> dict[str, float]:
    """The cheap features of a pair, from the vectors the index holds."""
    from .signals import PHashSignal

    return {"phash_distance": float(np.count_nonzero(np.asarray(phash_a) != np.asarray(phash_b))) / PHashSignal.dim,
            "resnet_cosine": float(np.dot(resnet_a, resnet_b))}


def with_standins(values: dict[str, float], names: tuple[str, ...] = EXPENSIVE) -> dict[str, float]:
    """``values`` with every one of ``names`` it lacks set to its stand-in."""
    return {**{n: BY_NAME[n].standin for n in names if n not in values}, **values}
