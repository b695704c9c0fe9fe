"""Metric code on tiny hand-made cases whose answers are worked out by hand."""

import pytest

from ndid_tasks.metrics import Prediction, micro_ap, operating_point, recall_at_1, recall_at_precision

TRUTH = {"q1": "a", "q2": "b", "q3": "c", "n1": ""}  # three copies, one negative


def test_perfect_ranking():
    preds = [Prediction("q1", "a", 0.9), Prediction("q2", "b", 0.8), Prediction("q3", "c", 0.7),
             Prediction("n1", "a", 0.1)]
    assert micro_ap(preds, TRUTH) == pytest.approx(1.0)
    assert recall_at_precision(preds, TRUTH, 0.99) == pytest.approx(1.0)
    assert recall_at_1(preds, TRUTH) == pytest.approx(1.0)


def test_negative_ranked_first():
    # ranks: n1 (wrong), q1 ok, q2 ok, q3 wrong reference
    preds = [Prediction("n1", "a", 0.95), Prediction("q1", "a", 0.9), Prediction("q2", "b", 0.8),
             Prediction("q3", "x", 0.7)]
    # precision at the correct ones: 1/2 and 2/3; AP = (0.5 + 0.6667) / 3
    assert micro_ap(preds, TRUTH) == pytest.approx((1 / 2 + 2 / 3) / 3)
    assert recall_at_precision(preds, TRUTH, 0.99) == 0.0
    assert recall_at_precision(preds, TRUTH, 0.6) == pytest.approx(2 / 3)
    assert recall_at_1(preds, TRUTH) == pytest.approx(2 / 3)


def test_missing_predictions_cost_recall():
    preds = [Prediction("q1", "a", 0.9), Prediction("q2", "", 0.0)]
    assert micro_ap(preds, TRUTH) == pytest.approx(1 / 3)
    assert recall_at_1(preds, TRUTH) == pytest.approx(1 / 3)


def test_ties_cannot_be_split_by_a_threshold():
    preds = [Prediction("q1", "a", 0.5), Prediction("n1", "a", 0.5), Prediction("q2", "b", 0.4)]
    # q1 and n1 share a score: no threshold takes q1 without n1, so P>=0.99 gives nothing
    assert recall_at_precision(preds, TRUTH, 0.99) == 0.0


def test_operating_point_counts_false_positives_on_negatives():
    preds = [Prediction("q1", "a", 0.9), Prediction("q2", "x", 0.8), Prediction("n1", "a", 0.85),
             Prediction("q3", "c", 0.2)]
    op = operating_point(preds, TRUTH, threshold=0.5)
    assert op["true_positives"] == 1 and op["false_positives"] == 2
    assert op["false_positives_on_negatives"] == 1
    assert op["precision"] == pytest.approx(1 / 3) and op["recall"] == pytest.approx(1 / 3)
