"""Matcher.rank's last step: one faint look per query (GeometricSignal.faint_look via the engine)."""

from types import SimpleNamespace

import numpy as np

from ndid_tasks.calibration import default_calibration
from ndid_tasks.decide import Matcher
from ndid_tasks.scoring import PairScore


def test_a_faint_look_rescores_the_pairs_it_raised_and_looks_in_stage1_order():
    """The verified candidates are offered best stage-1 first (a faint query's chance inliers must
    not decide which candidates get looked at); a raised pair is scored again by stage 2 and the
    ranking re-sorted; stage-1-only pairs are not offered; nothing raised: the ranking stands."""
    cal = default_calibration("random")
    asked: list[list[tuple[str, float]]] = []

    def matcher(raise_to):
        def faint_look(query_id, stage2):
            asked.append(stage2)
            return raise_to
        return Matcher(SimpleNamespace(words=""), cal, 24, 10, lambda q, c: {}, faint_look=faint_look)

    def pair(cid, stage, **feats):
        model = cal.stage2 if stage == "stage2" else cal.stage1
        return PairScore(cid, feats, model.probability(feats), stage, model.contributions(feats))

    noisy = pair("noisy", "stage2", phash_distance=0.5, resnet_cosine=0.05, log_inliers=float(np.log1p(3)))
    similar = pair("similar", "stage2", phash_distance=0.3, resnet_cosine=0.4, log_inliers=0.0)
    settled = pair("settled", "stage1", phash_distance=0.5, resnet_cosine=0.0)
    assert noisy.probability > similar.probability  # 3 chance inliers outrank the global similarity
    assert cal.stage1.probability(similar.features) > cal.stage1.probability(noisy.features)
    ranked = sorted([noisy, similar, settled], key=lambda s: -s.probability)
    image = SimpleNamespace(id="q")

    after = matcher({"similar": float(np.log1p(40))})._after_faint_look(image, ranked)
    assert [cid for cid, _ in asked[-1]] == ["similar", "noisy"]  # stage-1 order, stage-2 pairs only
    assert after[0].candidate_id == "similar" and after[0].features["log_inliers"] == np.log1p(40)
    assert after[0].probability == cal.stage2.probability(after[0].features) >= cal.threshold
    assert after[0].contributions["log_inliers"] > similar.contributions["log_inliers"]
    assert [s.candidate_id for s in after[1:]] == [s.candidate_id for s in ranked if s.candidate_id != "similar"]
    assert matcher({})._after_faint_look(image, ranked) == ranked
    assert Matcher(SimpleNamespace(words=""), cal, 24, 10, lambda q, c: {})._after_faint_look(image, ranked) == ranked
