"""Copy-detection metrics over top-1 predictions (ISC21 style: one global threshold).

A prediction is (query, predicted reference, score). It is correct when the query has a ground
truth original and the prediction names it. Queries without an original (negatives) can only
produce false positives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Prediction:
    query: str
    reference: str  # "" when the method proposes nothing
    score: float


def _ranked(preds: Sequence[Prediction], truth: dict[str, str]) -> tuple[np.ndarray, np.ndarray, int]:
    """Correctness and scores, best score first; and the number of queries that have an original."""
    positives = sum(1 for q, o in truth.items() if o)
    usable = [p for p in preds if p.reference]
    usable.sort(key=lambda p: (-p.score, p.query))
    correct = np.array([bool(truth.get(p.query)) and truth[p.query] == p.reference for p in usable], dtype=bool)
    scores = np.array([p.score for p in usable], dtype=float)
    return correct, scores, positives


def micro_ap(preds: Sequence[Prediction], truth: dict[str, str]) -> float:
    """Area under the precision-recall curve of all predictions ranked by score."""
    correct, _, positives = _ranked(preds, truth)
    if positives == 0 or len(correct) == 0:
        return 0.0
    tp = np.cumsum(correct)
    precision = tp / np.arange(1, len(correct) + 1)
    return float(np.sum(precision[correct]) / positives)


def pr_curve(preds: Sequence[Prediction], truth: dict[str, str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, threshold) at every rank."""
    correct, scores, positives = _ranked(preds, truth)
    if len(correct) == 0:
        return np.array([1.0]), np.array([0.0]), np.array([np.inf])
    tp = np.cumsum(correct)
    return tp / np.arange(1, len(correct) + 1), tp / max(positives, 1), scores


def recall_at_precision(preds: Sequence[Prediction], truth: dict[str, str], min_precision: float) -> float:
    """Best recall over global thresholds whose precision is at least ``min_precision``."""
    precision, recall, scores = pr_curve(preds, truth)
    best = 0.0
    for i in range(len(precision)):
        # a threshold can only cut between distinct scores
        if i + 1 < len(scores) and scores[i + 1] == scores[i]:
            continue
        if precision[i] >= min_precision:
            best = max(best, float(recall[i]))
    return best


def recall_at_1(preds: Sequence[Prediction], truth: dict[str, str]) -> float:
    """Share of queries with an original whose top-1 is that original (score ignored)."""
    positives = [q for q, o in truth.items() if o]
    if not positives:
        return 0.0
    top = {p.query: p.reference for p in preds}
    return sum(1 for q in positives if top.get(q) == truth[q]) / len(positives)


def operating_point(preds: Sequence[Prediction], truth: dict[str, str], threshold: float) -> dict[str, float]:
    """Precision/recall of "duplicate if score >= threshold", and false positives on negatives."""
    tp = fp = fp_neg = 0
    for p in preds:
        if not p.reference or p.score < threshold:
            continue
        if truth.get(p.query) and truth[p.query] == p.reference:
            tp += 1
        else:
            fp += 1
            fp_neg += 0 if truth.get(p.query) else 1
    positives = sum(1 for o in truth.values() if o)
    negatives = sum(1 for o in truth.values() if not o)
    return {"threshold": threshold, "precision": tp / (tp + fp) if tp + fp else 1.0,
            "recall": tp / positives if positives else 0.0, "true_positives": tp, "false_positives": fp,
            "false_positives_on_negatives": fp_neg, "negatives": negatives}
