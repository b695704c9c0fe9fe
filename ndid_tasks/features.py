"""The pair features the decision model reads: one registry, from which everything else follows.

Each signal declares its features (``Signal.pair_features``): which stage reads it, whether a
calibration may drop it (optional: kept only where it pays, see calibration / bootstrap), and its
**stand-in**: the value used where it cannot be measured (a source that is gone, an unreadable
picture). Stand-ins are what an unrelated pair shows, so a missing measurement never argues for
"duplicate".

The calibration's feature order (stage 1, stage 2), the optional-signal selection, the bootstrap
pairs, audited-label pairs and the benchmark's ablations all take their names from here; adding a
pair feature is an entry in its signal's ``pair_features``.
"""

from __future__ import annotations

import numpy as np

from .signals import DECISION_SIGNALS, PairFeature, PHashSignal

# each signal declares its own pair features (ndid_tasks.signals); the order of DECISION_SIGNALS
# is the calibration's feature order
REGISTRY: tuple[PairFeature, ...] = tuple(f for signal in DECISION_SIGNALS for f in signal.pair_features)
BY_NAME = {f.name: f for f in REGISTRY}
STAGE1 = tuple(f.name for f in REGISTRY if f.stage == 1)
STAGE2 = tuple(f.name for f in REGISTRY)  # stage 2 reads every feature (the optional ones where kept)
OPTIONAL = tuple(f.name for f in REGISTRY if f.optional)
BASE_STAGE2 = tuple(f.name for f in REGISTRY if not f.optional)
EXPENSIVE = tuple(f.name for f in REGISTRY if f.stage == 2)  # measured only for verified pairs


def stage1_features(phash_a: np.ndarray, phash_b: np.ndarray, resnet_a: np.ndarray, resnet_b: np.ndarray
                    ) -> dict[str, float]:
    """The cheap features of a pair, from the vectors the index holds."""
    return {"phash_distance": float(np.count_nonzero(np.asarray(phash_a) != np.asarray(phash_b))) / PHashSignal.dim,
            "resnet_cosine": float(np.dot(resnet_a, resnet_b))}


def with_standins(values: dict[str, float], names: tuple[str, ...] = EXPENSIVE) -> dict[str, float]:
    """``values`` with every one of ``names`` it lacks set to its stand-in."""
    return {**{n: BY_NAME[n].standin for n in names if n not in values}, **values}
