"""The one scoring function: stage 1 -> band -> stage 2 -> threshold, for every caller.

The Matcher (decisions, ``ndid query``, the benchmark), the bootstrap check set that sets a
calibration's threshold, and the recalibration's comparisons all score pairs here, so what a
calibration is judged on is what it will do in production.

    stage-1 LR on the cheap features of every candidate
        outside the band -> that probability (stage "stage1": stage 1 rejects alone)
        inside the band  -> the best ``stage2_max`` by stage-1 probability (of those worth it,
                            where a gate says which) get the expensive features and the stage-2
                            LR (stage "stage2"); the rest cannot be accepted unverified: capped
                            at the band's lower edge ("unverified")
    best pair >= threshold -> duplicate of that candidate
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # calibration uses gated() below: no import cycle at run time
    from .calibration import Calibration


@dataclass
class PairScore:
    candidate_id: Any  # the candidate's image id (the check set keys pairs its own way)
    features: dict[str, float]
    probability: float
    stage: str  # "stage1", "stage2" or "unverified" (in the band but beyond the verification cap, or gated out)
    contributions: dict[str, float]
    orientation: str = ""  # how the query was turned (a PHashSignal.DIHEDRAL name) or which view of it matched (VIEWS), "" = as is


Verify = Callable[[list], dict]  # candidate ids -> {id: expensive features}; a missing id could not be verified


def ambiguous(cal: Calibration, pairs: Sequence[tuple[Any, dict[str, float]]], band: tuple[float, float]
              ) -> list[tuple[Any, dict[str, float], float]]:
    """The pairs inside the band with their stage-1 probability, most promising first (the order
    in which they get verified)."""
    out = []
    for cid, feats in pairs:
        p1 = cal.stage1.probability(feats)
        if band[0] <= p1 <= band[1]:
            out.append((cid, feats, p1))
    out.sort(key=lambda a: (-a[2], a[0]))
    return out


def to_verify(cal: Calibration, pairs: Sequence[tuple[Any, dict[str, float]]], band: tuple[float, float],
              stage2_max: int, worth: Callable[[Any], bool] | None = None
              ) -> tuple[list[tuple[Any, dict[str, float], float]], list[tuple[Any, dict[str, float], float]]]:
    """The band's pairs split into those stage 2 verifies (the best ``stage2_max`` of those
    ``worth`` verifying, by stage-1 probability) and those it does not."""
    in_band = ambiguous(cal, pairs, band)
    chosen = [a for a in in_band if worth is None or worth(a[0])][:stage2_max]
    picked = {a[0] for a in chosen}
    return chosen, [a for a in in_band if a[0] not in picked]


def score_pairs(cal: Calibration, pairs: Sequence[tuple[Hashable, dict[str, float]]], verify: Verify,
                band: tuple[float, float] | None = None, stage2_max: int = 8,
                worth: Callable[[Any], bool] | None = None) -> list[PairScore]:
    """Every pair's probability and how it was reached, best first (ties: by candidate id).
    ``pairs`` carry the stage-1 features; ``verify`` is called once, for the pairs stage 2 reads;
    ``worth`` (a candidate id -> bool) gates which band pairs it may read (:func:`to_verify`)."""
    band = cal.band if band is None else band
    scores: list[PairScore] = []
    chosen, passed_over = to_verify(cal, pairs, band, stage2_max, worth)
    inside = {cid for cid, _, _ in chosen + passed_over}
    for cid, feats in pairs:
        if cid not in inside:
            scores.append(PairScore(cid, feats, cal.stage1.probability(feats), "stage1", cal.stage1.contributions(feats)))

    def unverified(cid: Hashable, feats: dict[str, float], p1: float) -> PairScore:
        return PairScore(cid, feats, min(p1, band[0]), "unverified", cal.stage1.contributions(feats))

    scores += [unverified(cid, feats, p1) for cid, feats, p1 in passed_over]
    extra = verify([cid for cid, _, _ in chosen]) if chosen else {}
    for cid, feats, p1 in chosen:
        more = extra.get(cid)
        if more is None:  # e.g. the candidate's source is gone: it cannot be verified
            scores.append(unverified(cid, feats, p1))
            continue
        both = {**feats, **more}
        scores.append(PairScore(cid, both, cal.stage2.probability(both), "stage2", cal.stage2.contributions(both)))
    scores.sort(key=lambda s: (-s.probability, s.candidate_id))
    return scores


def decision_band(band: tuple[float, float], threshold: float) -> tuple[float, float]:
    """The band as decisions use it. Below its lower edge stage 1 has said "not a duplicate", and a
    pair that could not be verified is capped at that edge, so the edge must lie under the
    threshold or those pairs become duplicates nobody verified (NDID_AMBIGUOUS_LOW=0.3 with the
    then shipped threshold 0.201 called 26 of 36 negative queries duplicates). An edge at or above the
    threshold moves just under it: more pairs are verified, none is accepted unverified. An empty
    band (stage 2 off: stage 1 decides alone, by the threshold) is left as it is."""
    low, high = band
    if low >= high or low < threshold:
        return low, high
    low = float(np.nextafter(threshold, 0.0))
    return low, max(low, high)


def is_duplicate(score: PairScore | None, threshold: float) -> bool:
    """The last step: the best pair at or above the threshold."""
    return score is not None and score.probability >= threshold


def gated(p1: np.ndarray, p2: np.ndarray, band: tuple[float, float]) -> np.ndarray:
    """:func:`score_pairs` for independent pairs, vectorised (no cap applies to a single pair):
    stage 2's probability inside the band, stage 1's outside."""
    return np.where((p1 >= band[0]) & (p1 <= band[1]), p2, p1)
