"""The audit loop's policy and estimates (ndid_tasks.review) and the review page's label keys."""

import json
import math

import numpy as np
import pytest

from ndid_tasks.calibration import default_calibration
from ndid_tasks.config import Settings
from ndid_tasks.labels import (
    labelled_pair_ids,
    pair_id,
    parse_labels,
    review_label,
    review_label_key,
    write_review_label,
)
from ndid_tasks.review import audit_estimate, in_audit_sample, latest_verdicts, review_queue, wilson

CAL = default_calibration("random")


def record(n: int, decision: str, p: float, stage: str = "stage2", matched: bool = True, **features) -> dict:
    feats = {"phash_distance": 0.4, "resnet_cosine": 0.5, "log_inliers": 1.0, **features}
    return {"id": f"s3://b/img{n:04d}.jpg", "matched_id": f"s3://b/orig{n:04d}.jpg" if matched else "",
            "decision": decision, "probability": p, "stage": stage, "features": feats,
            "contributions": {"intercept": -1.0, "resnet_cosine": 0.5}, "_key": f"decisions/records/{n}.json"}


def test_audit_sample_is_a_function_of_the_id_alone():
    ids = [f"s3://b/{n}.jpg" for n in range(20_000)]
    chosen = [i for i in ids if in_audit_sample(i, 0.05)]
    assert 800 < len(chosen) < 1200  # 5 % of 20,000, give or take sampling noise
    assert chosen == [i for i in ids if in_audit_sample(i, 0.05)]  # stable
    assert set(chosen) <= {i for i in ids if in_audit_sample(i, 0.2)}  # nested as the rate grows


def sample_free_ids(n: int, rate: float) -> list[int]:
    return [k for k in range(10 * n) if not in_audit_sample(f"s3://b/img{k:04d}.jpg", rate)][:n]


def test_queue_orders_by_closeness_to_the_threshold_and_weighs_stage2_disagreements():
    t = CAL.threshold
    a, b, c, d, e = sample_free_ids(5, 0.05)
    similar = {"resnet_cosine": 0.99, "phash_distance": 0.02}  # stage 1 alone: duplicate
    assert CAL.stage1.probability({**similar, "log_inliers": 1.0}) >= t
    at = math.log(t / (1 - t))  # log-odds from the threshold, whatever the shipped one is

    def p(log_odds: float) -> float:
        return 1 / (1 + math.exp(-(at + log_odds)))

    overturned = record(a, "unique", p(-0.61), **similar)  # verification said unique: 0.61 log-odds, halved
    near = record(b, "duplicate", p(0.22), **similar)  # both stages agree
    mid = record(c, "duplicate", p(0.58), **similar)
    far = record(d, "unique", 0.001, resnet_cosine=0.0, phash_distance=0.6)
    exact = record(e, "duplicate", 1.0, stage="exact")
    cards = review_queue([far, mid, near, exact, overturned], CAL, set(), rate=0.05, limit=10)
    assert [card.image_a for card in cards] == [near["id"], overturned["id"], mid["id"], far["id"]]  # exact: certain
    assert "overturned" in cards[1].reason and "threshold" in cards[0].reason
    assert all(card.stream == "informative" for card in cards)


def test_queue_leaves_out_labelled_pairs_and_interleaves_the_random_sample():
    rate = 0.3
    records = [record(k, "duplicate" if k % 2 else "unique", 0.2 + 0.6 * (k % 7) / 7) for k in range(60)]
    sampled = [r for r in records if in_audit_sample(r["id"], rate)]
    assert len(sampled) >= 5
    labelled = {pair_id(records[0]["id"], records[0]["matched_id"])}
    cards = review_queue(records, CAL, labelled, rate=rate, limit=40, sample_every=4)
    assert records[0]["id"] not in {c.image_a for c in cards}
    streams = [c.stream for c in cards]
    assert streams[3] == streams[7] == "sample" and streams[:3] == ["informative"] * 3
    assert {c.image_a for c in cards if c.stream == "sample"} <= {r["id"] for r in sampled}
    assert len({c.pair for c in cards}) == len(cards)


def test_unique_without_a_candidate_is_not_reviewable():
    assert review_queue([record(1, "unique", 0.0, stage="", matched=False)], CAL, set(), 1.0) == []


def test_wilson_interval():
    lo, hi = wilson(9, 10)
    assert 0.55 < lo < 0.6 and 0.98 < hi <= 1.0
    assert wilson(0, 0) == (0.0, 1.0)


def test_audit_estimate_is_unbiased_on_a_synthetic_population():
    """1,000 duplicates (90 % right) and 1,000 reviewable uniques (5 % missed duplicates): the
    estimate from a 20 % id-sample, all sampled pairs labelled, lands near the truth."""
    rng = np.random.default_rng(0)
    records, truth = [], {}
    for k in range(2000):
        r = record(k, "duplicate" if k < 1000 else "unique", 0.5)
        is_dup = rng.random() < (0.9 if k < 1000 else 0.05)
        truth[pair_id(r["id"], r["matched_id"])] = bool(is_dup)
        records.append(r)
    records.append(record(5000, "duplicate", 1.0, stage="exact"))
    sampled = {pid: v for r in records if in_audit_sample(r["id"], 0.2)
               and (pid := pair_id(r["id"], r["matched_id"])) in truth for v in [truth[pid]]}
    # the queue's informative labels must not bias it: label every near-threshold pair "duplicate"
    informative = {pair_id(r["id"], r["matched_id"]): True for r in records[:300] if not in_audit_sample(r["id"], 0.2)}
    est = audit_estimate(records, {**informative, **sampled}, rate=0.2)
    true_tp = sum(truth[pair_id(r["id"], r["matched_id"])] for r in records[:1000]) + 1
    true_fn = sum(truth[pair_id(r["id"], r["matched_id"])] for r in records[1000:2000])
    assert est["precision"] == pytest.approx(true_tp / 1001, abs=0.04)
    assert est["recall"] == pytest.approx(true_tp / (true_tp + true_fn), abs=0.03)
    lo, hi = est["precision_ci"]
    assert lo < est["precision"] < hi and hi - lo < 0.12
    lo, hi = est["recall_ci"]
    assert lo <= est["recall"] <= hi
    assert est["labelled_duplicates"] + est["labelled_uniques"] == len(sampled)


def test_audit_estimate_says_nothing_without_sample_labels():
    est = audit_estimate([record(1, "duplicate", 0.9)], {}, rate=0.05)
    assert est["precision"] is None and est["recall"] is None


def test_review_labels_one_object_per_auditor_and_pair(tmp_path):
    settings = Settings(state_dir=str(tmp_path))
    key_ann = review_label_key(settings, "ann", "s3://b/x.jpg", "s3://b/y.jpg")
    assert key_ann == review_label_key(settings, "ann", "s3://b/y.jpg", "s3://b/x.jpg")  # order-free
    assert key_ann != review_label_key(settings, "bob", "s3://b/x.jpg", "s3://b/y.jpg")
    assert key_ann.startswith("labels/review/ann-") and key_ann.endswith(".jsonl")
    assert review_label_key(settings, "a/../b", "x", "y").count("/") == 3  # the name cannot escape the prefix

    class Store:  # the two calls the label writer makes, in memory (the S3 path: tests/ui)
        def __init__(self):
            self.objects: dict[str, bytes] = {}

        def put_bytes(self, key, data, content_type):
            self.objects[key] = data

        def iter_objects(self, prefix):
            from types import SimpleNamespace

            return [SimpleNamespace(key=k) for k in self.objects if k.startswith(prefix)]

    store = Store()
    for verdict in ("duplicate", "duplicate", "not_duplicate"):  # twice the same card, then a changed mind
        write_review_label(store, settings, review_label("s3://b/x.jpg", "s3://b/y.jpg", verdict, "ann"))
    assert list(store.objects) == [key_ann]
    labels, errors = parse_labels(key_ann, store.objects[key_ann])  # the documented format
    assert errors == [] and [(lab.is_duplicate, lab.auditor) for lab in labels] == [(False, "ann")]
    write_review_label(store, settings, review_label("s3://b/x.jpg", "s3://b/z.jpg", "unsure", "ann"))
    unsure = json.loads(store.objects[review_label_key(settings, "ann", "s3://b/x.jpg", "s3://b/z.jpg")])
    assert unsure["is_duplicate"] == "unsure"
    assert labelled_pair_ids(store, settings) == {pair_id("s3://b/x.jpg", "s3://b/y.jpg"),
                                                  pair_id("s3://b/x.jpg", "s3://b/z.jpg")}
    assert latest_verdicts([json.loads(v) for v in store.objects.values()]) == {
        pair_id("s3://b/x.jpg", "s3://b/y.jpg"): False}


@pytest.mark.parametrize("verdict, auditor, a, b", [("maybe", "ann", "x", "y"), ("duplicate", "", "x", "y"),
                                                     ("duplicate", "ann", "x", "x")])
def test_bad_review_labels_are_refused(verdict, auditor, a, b):
    with pytest.raises(ValueError):
        review_label(a, b, verdict, auditor)
