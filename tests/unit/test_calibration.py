import json
import math

import numpy as np
import pytest

from ndid_tasks.calibration import (
    Calibration,
    CalibrationError,
    choose_band,
    default_calibration,
    evaluate,
    fit_calibration,
)


def synthetic_pairs(n=400, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    return {
        "phash_distance": np.where(y, rng.uniform(0, 0.35, n), rng.uniform(0.3, 0.6, n)),
        "resnet_cosine": np.where(y, rng.uniform(0.7, 1.0, n), rng.uniform(0.3, 0.8, n)),
        "clip_cosine": np.where(y, rng.uniform(0.8, 1.0, n), rng.uniform(0.2, 0.85, n)),
        "log_inliers": np.where(y, np.log1p(rng.integers(5, 300, n)), np.log1p(rng.integers(0, 12, n))),
    }, y


def test_fit_separates_and_round_trips_through_json():
    feats, y = synthetic_pairs()
    cal = fit_calibration(feats, y, "random", training={"source": "test"}, version="t1")
    assert cal.metrics["gated"]["average_precision"] > 0.9
    again = Calibration.from_json(cal.to_json())
    assert again == cal
    x = {"phash_distance": 0.05, "resnet_cosine": 0.95, "clip_cosine": 0.97, "log_inliers": 4.0}
    assert again.stage1.probability(x) > 0.9
    assert again.stage2.probability({"phash_distance": 0.5, "resnet_cosine": 0.4, "clip_cosine": 0.3,
                                      "log_inliers": 0.5}) < 0.1


def test_contributions_add_up_to_the_logit():
    feats, y = synthetic_pairs()
    cal = fit_calibration(feats, y, "random", training={})
    x = {"phash_distance": 0.2, "resnet_cosine": 0.8, "clip_cosine": 0.85, "log_inliers": 2.0}
    contrib = cal.stage2.contributions(x)
    p = 1 / (1 + math.exp(-sum(contrib.values())))
    assert p == pytest.approx(cal.stage2.probability(x))


def test_malformed_documents_are_refused():
    feats, y = synthetic_pairs()
    good = fit_calibration(feats, y, "random", training={}).to_dict()
    for broken in ({**good, "schema": "other"}, {**good, "band": [0.9, 0.1]},
                   {**good, "stage1": {**good["stage1"], "features": ["a", "b"]}},
                   {k: v for k, v in good.items() if k != "threshold"}):
        with pytest.raises(CalibrationError):
            Calibration.from_dict(json.loads(json.dumps(broken)))
    with pytest.raises(CalibrationError):
        Calibration.from_json("not json")


def test_single_class_is_refused():
    feats, y = synthetic_pairs()
    with pytest.raises(CalibrationError):
        fit_calibration(feats, np.zeros_like(y), "random", training={})


def test_band_covers_the_uncertain_middle():
    y = np.array([0] * 50 + [1] * 50)
    p = np.concatenate([np.linspace(0, 0.6, 50), np.linspace(0.4, 1.0, 50)])
    lo, hi = choose_band(y, p)
    assert lo <= 0.4 and hi >= 0.6


def test_evaluate_counts_false_positives():
    feats, y = synthetic_pairs()
    cal = fit_calibration(feats, y, "random", training={})
    m = evaluate(cal, feats, y)
    assert m["n"] == len(y) and 0 <= m["false_positives"] <= len(y)
    assert 0 <= m["stage2_share_of_pairs"] <= 1


def test_shipped_default_for_random_weights_loads_and_is_marked_untrained():
    cal = default_calibration("random")
    assert cal.untrained and cal.weights_mode == "random"
    assert cal.training["source"] == "bootstrap"


def test_the_shipped_default_was_fitted_at_the_default_sift_settings(caplog):
    """Its inlier weights hold for the SIFT resolution it was fitted at; another one is warned about."""
    from ndid_tasks.config import Settings
    from ndid_tasks.pipeline import resolve_calibration

    settings = Settings(weights_mode="random")
    assert default_calibration("random").training["sift"] == settings.sift_params
    with caplog.at_level("WARNING", logger="ndid_tasks.pipeline"):
        resolve_calibration(settings)
    assert "fitted with SIFT" not in caplog.text
    with caplog.at_level("WARNING", logger="ndid_tasks.pipeline"):
        resolve_calibration(settings.replace(sift_max_side=256))
    assert "fitted with SIFT" in caplog.text and "refit" in caplog.text


def test_no_shipped_default_for_pretrained_says_how_to_make_one():
    with pytest.raises(CalibrationError, match="ndid calibrate --bootstrap"):
        default_calibration("pretrained")


def test_clip_is_kept_only_where_it_adds_heldout_precision():
    feats, y = synthetic_pairs(n=600)
    # CLIP as noise: a calibration does not pay for a second network pass it gains nothing from
    noisy = {**feats, "clip_cosine": np.random.default_rng(5).uniform(0, 1, len(y))}
    lean = fit_calibration(noisy, y, "random", training={})
    assert "clip_cosine" not in lean.stage2.features
    assert lean.metrics["stage2_selection"]["dropped"] == ["clip_cosine"]
    x = {"phash_distance": 0.5, "resnet_cosine": 0.4, "log_inliers": 0.5}  # no clip value needed
    assert lean.stage2.probability(x) < 0.5
    assert Calibration.from_json(lean.to_json()).stage2.features == list(lean.stage2.features)
    # CLIP as the only clean separator of the hard middle: kept
    rng = np.random.default_rng(6)
    hard = {"phash_distance": rng.uniform(0.2, 0.4, len(y)), "resnet_cosine": rng.uniform(0.5, 0.8, len(y)),
            "log_inliers": np.log1p(rng.integers(0, 20, len(y))),
            "clip_cosine": np.where(y, rng.uniform(0.7, 1.0, len(y)), rng.uniform(0.0, 0.6, len(y)))}
    assert "clip_cosine" in fit_calibration(hard, y, "random", training={}).stage2.features


def test_band_lower_edge_keeps_almost_every_duplicate():
    rng = np.random.default_rng(0)
    y = np.array([0] * 500 + [1] * 200)
    p = np.concatenate([rng.uniform(0, 0.45, 500), rng.uniform(0.05, 1.0, 200)])  # positives spread low
    lo, _ = choose_band(y, p)
    assert np.mean(p[y == 1] < lo) == 0.0
    assert choose_band(y, p, max_missed=0.05)[0] >= lo


def test_each_optional_signal_is_judged_on_its_own():
    _, y = synthetic_pairs(n=600)
    rng = np.random.default_rng(7)
    hard = {"phash_distance": rng.uniform(0.2, 0.4, len(y)), "resnet_cosine": rng.uniform(0.5, 0.8, len(y)),
            "log_inliers": np.log1p(rng.integers(0, 20, len(y))),
            "clip_cosine": rng.uniform(0, 1, len(y)),  # noise: left out
            "pdq_distance": np.where(y, rng.uniform(0.0, 0.3, len(y)), rng.uniform(0.25, 0.6, len(y)))}
    cal = fit_calibration(hard, y, "random", training={})
    assert cal.stage2.features == ["phash_distance", "resnet_cosine", "pdq_distance", "log_inliers"]
    sel = cal.metrics["stage2_selection"]
    assert sel["dropped"] == ["clip_cosine"] and sel["heldout_ap_adding"]["pdq_distance"] > sel["heldout_ap_base"]
    assert Calibration.from_json(cal.to_json()).stage2.features == cal.stage2.features
    d = cal.to_dict()
    d["stage2"]["features"] = list(reversed(d["stage2"]["features"]))  # not this engine's order
    with pytest.raises(CalibrationError):
        Calibration.from_dict(d)


def test_image_level_selection_adds_a_signal_only_when_it_raises_image_recall():
    from ndid_tasks.bootstrap import IMAGE_LEVEL_GAIN, select_by_image_level
    from ndid_tasks.config import Settings

    feats, y = synthetic_pairs(n=600)
    feats["pdq_distance"] = feats["phash_distance"]

    def fit(stage2_features=None):
        return fit_calibration(feats, y, "random", training={}, stage2_features=stage2_features)

    lean = fit(["phash_distance", "resnet_cosine", "log_inliers"])

    class CheckSetStandIn:  # image-level recall by which signal is in stage 2
        def __init__(self, recall_of):
            self.recall_of = recall_of

        def evaluate(self, cal, _stage2_max):
            return {"recall": max([0.80] + [r for f, r in self.recall_of.items() if f in cal.stage2.features])}

    query_level = CheckSetStandIn

    settings = Settings()
    helps = select_by_image_level(lean, fit, query_level({"pdq_distance": 0.80 + 2 * IMAGE_LEVEL_GAIN}), settings)
    assert helps.stage2.features == ["phash_distance", "resnet_cosine", "pdq_distance", "log_inliers"]
    assert helps.metrics["stage2_selection"]["dropped"] == ["clip_cosine"]
    idle = select_by_image_level(lean, fit, query_level({"pdq_distance": 0.80 + IMAGE_LEVEL_GAIN / 2}), settings)
    assert idle.stage2.features == ["phash_distance", "resnet_cosine", "log_inliers"]
    assert idle.metrics["stage2_selection"]["image_level_recall_adding"] == {
        "clip_cosine": 0.8, "pdq_distance": round(0.80 + IMAGE_LEVEL_GAIN / 2, 4)}
