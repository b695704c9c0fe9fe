"""Matcher.rank's last step: one faint look per query (GeometricSignal.faint_look via the engine)."""

from types import SimpleNamespace

import numpy as np

from ndid_tasks.calibration import default_calibration
from ndid_tasks.decide import Matcher
from ndid_tasks.scoring import PairScore


def test_a_faint_look_rescores_the_pairs_it_raised_and_looks_in_stage1_order():
    """The verified candidates are offered best stage-1 first (a faint query's chance inliers must
    not decide which candidates get looked at); a raised pair is scored again by stage 2 and the
    ranking re-sorted; stage-1-only pairs are not offered; nothing raised: the ranking stands. A
    query whose best pair is a duplicate already is not looked at; one with a verified but
    undecided pair is."""
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
    # 15 inliers under a low global similarity: verified, not decided -- looked at; decided: not
    weak = pair("weak", "stage2", phash_distance=0.47, resnet_cosine=0.0, log_inliers=float(np.log1p(15)))
    assert weak.probability < cal.threshold
    asked.clear()
    matcher({})._after_faint_look(image, [weak])
    assert [cid for cid, _ in asked[-1]] == ["weak"]
    decided = pair("decided", "stage2", phash_distance=0.3, resnet_cosine=0.4, log_inliers=float(np.log1p(40)))
    assert decided.probability >= cal.threshold
    asked.clear()
    assert matcher({"weak": 9.0})._after_faint_look(image, [decided, weak]) == [decided, weak] and asked == []


def test_a_faint_look_takes_the_best_by_stage1_and_the_best_by_words_in_turn():
    """A faint tight crop's original can rank last by the (untrained) global similarity yet first
    by the query's visual words: the look order alternates the two rankings, each pair once, so
    with two looks both the stage-1 favourite and the words favourite are looked at. Without a
    words search for the query the order is stage 1's alone."""
    cal = default_calibration("random")
    asked: list[list[str]] = []

    def faint_look(query_id, stage2):
        asked.append([cid for cid, _ in stage2])
        return {}

    matcher = Matcher(SimpleNamespace(words=""), cal, 24, 10, lambda q, c: {}, faint_look=faint_look)
    cosines = {"a": 0.40, "b": 0.30, "c": 0.20, "original": 0.05}  # stage-1 order a, b, c, original
    ranked = [PairScore(cid, feats, cal.stage2.probability(feats), "stage2", {})
              for cid, cos in cosines.items()
              for feats in [{"phash_distance": 0.5, "resnet_cosine": cos, "log_inliers": 0.0}]]
    image = SimpleNamespace(id="q")
    matcher._after_faint_look(image, ranked)
    assert asked[-1] == ["a", "b", "c", "original"]
    matcher._words_found["q"] = ({"original": 0.30, "b": 0.12, "elsewhere": 0.5}, 0.1)  # (not verified: not offered)
    matcher._after_faint_look(image, ranked)
    assert asked[-1] == ["a", "original", "b", "c"]
    assert [s.candidate_id for s in matcher.look_order(image, ranked)][:2] == ["a", "original"]


def test_a_band_starting_above_the_threshold_never_accepts_a_pair_unverified():
    """Below the band stage 1 rejects: with a lower edge over the threshold (an NDID_AMBIGUOUS_LOW
    override) such a pair used to be a duplicate nobody verified; the edge now moves under the
    threshold, so the pair is verified (and, with no inliers, rejected)."""
    from ndid_tasks.scoring import is_duplicate, score_pairs

    cal = default_calibration("random")
    feats = {"phash_distance": 0.35, "resnet_cosine": 0.3}
    p1 = cal.stage1.probability(feats)
    assert 0.1 < p1 < 0.9
    threshold, wanted = p1 - 0.05, (p1 + 0.05, 1.0)

    def verify(cids):
        return {c: {f: 0.0 for f in cal.stage2.features if f not in feats} for c in cids}

    old = score_pairs(cal, [("c", feats)], verify, wanted)[0]
    assert old.stage == "stage1" and is_duplicate(old, threshold)  # what the override did before
    matcher = Matcher(SimpleNamespace(words=""), cal, 24, 10, lambda q, c: {}, threshold=threshold, band=wanted)
    assert matcher.band[0] < threshold and matcher.band[1] == 1.0 and matcher.stage2_on
    now = score_pairs(cal, [("c", feats)], verify, matcher.band)[0]
    assert now.stage == "stage2" and not is_duplicate(now, threshold)
    # a band under the threshold, and an empty one (stage 2 off: stage 1 decides alone), stay as set
    assert Matcher(SimpleNamespace(words=""), cal, 24, 10, lambda q, c: {}).band == tuple(cal.band)
    off = Matcher(SimpleNamespace(words=""), cal, 24, 10, lambda q, c: {}, threshold=0.2, band=(0.5, 0.5))
    assert off.band == (0.5, 0.5) and not off.stage2_on


def sample_index(search_many, rows=None, sample=None):
    """A fake index whose uniform sample is ``sample``: [(id, created_at, original_id, words)]."""
    sample = sample if sample is not None else [(f"s{n}", n, "", {0: 1.0}) for n in range(100)]
    stored = {i: w for i, _, _, w in sample}
    return SimpleNamespace(words="words", search_many=search_many,
                           get_rows=lambda ids, fields: rows if rows is not None else {},
                           count=lambda: len(sample),
                           sample=lambda size, fields, total=None: [{"id": i, "created_at": t, "original_id": g}
                                                                    for i, t, g, _ in sample],
                           get_words=lambda ids: {i: stored[i] for i in ids if i in stored})


def test_the_background_sample_is_read_again_when_the_index_count_moves_or_it_is_old():
    """A query alone would read ~256 word vectors for its background: the Engine's BackgroundSample
    keeps them for queries while the index holds as many images, for at most a minute (decisions
    recorded meanwhile regroup copies without changing the count); decisions read afresh."""
    from ndid_tasks.decide import BackgroundSample

    now = [0.0]
    images = [("a", 1, "", {0: 1.0}), ("b", 2, "", {1: 1.0})]
    index = sample_index(None, sample=images)
    kept = BackgroundSample(max_age_s=60, clock=lambda: now[0])
    rows, stored = kept.get(index)
    assert [r["id"] for r in rows] == ["a", "b"] and stored == {"a": {0: 1.0}, "b": {1: 1.0}} and kept.reads == 1
    now[0] = 59.0
    assert kept.get(index) == (rows, stored) and kept.reads == 1  # the same index: kept
    images.append(("c", 3, "", {2: 1.0}))  # an image more: read again
    assert [r["id"] for r in kept.get(index)[0]] == ["a", "b", "c"] and kept.reads == 2
    images[0] = ("a", 1, "c", {0: 1.0})  # a decision recorded: the same count, the old grouping ...
    assert kept.get(index)[0][0]["original_id"] == "" and kept.reads == 2
    now[0] = 59.0 + 60
    assert kept.get(index)[0][0]["original_id"] == "c" and kept.reads == 3  # ... for a minute at most
    kept.get(index, reuse=False)
    assert kept.reads == 4  # decisions: every batch reads it


def test_words_candidates_are_gated_by_how_far_they_stand_out_of_the_query_background():
    """With NDID_VISUAL_WORDS_MIN_RATIO the Matcher keeps the words candidates at least that many
    times the query's background (its similarities to a sample of the earlier images, ranked in
    their top 3-12 %); 0 keeps the plain nearest. Small images, later sample rows, a short sample:
    no background, every candidate stands -- but a short sample with generic photos' words given
    takes its level from them. A group of copies counts once in the sample."""
    from ndid_tasks.decide import BackgroundSample
    from ndid_tasks.index import Hit

    cal = default_calibration("random")
    scores = [0.50, 0.21, 0.12] + [0.1] * 60
    asked: list[int] = []

    def search_many(field, vectors, limit, latest, radius=None):
        asked.append(limit)
        return [[Hit(f"r{n}", n, s) for n, s in enumerate(scores[:limit])] for _ in vectors]

    def query(n_words=300, created_at=1000):  # 300 words: a full image, 4 wanted; sample similarity 0.1
        return SimpleNamespace(id="q", created_at=created_at, words={w: 0.1 for w in range(n_words)})

    def matcher(ratio, sample=None, generic=()):
        return Matcher(sample_index(search_many, sample=sample), cal, 24, 10, lambda q, c: {}, words_candidates=4,
                       words_max=16, words_full=250, words_min_ratio=ratio, words_generic=generic)

    assert matcher(0.0).words_candidates_many([query()], before=False) == {"q": ["r0", "r1", "r2", "r3"]}
    assert asked[-1] == 4
    assert matcher(2.0).words_candidates_many([query()], before=False) == {"q": ["r0", "r1"]}
    assert matcher(2.0).words_candidates_many([query()]) == {"q": ["r0", "r1"]}
    assert matcher(6.0).words_candidates_many([query()], before=False) == {}
    assert matcher(6.0).words_candidates_many([query(249)], before=False) == {"q": [f"r{n}" for n in range(4)]}
    assert matcher(6.0).words_candidates_many([query(created_at=50)]) == {"q": ["r0", "r1", "r2", "r3"]}
    assert matcher(6.0).words_candidates_many([query(created_at=50)], before=False) == {}
    short = [(f"s{n}", n, "", {0: 1.0}) for n in range(63)]
    assert matcher(6.0, short).words_candidates_many([query()], before=False) == {"q": ["r0", "r1", "r2", "r3"]}
    # ... unless generic photos' words stand in (a new index): their level, 0.1 here, as the sample's
    assert matcher(6.0, short, generic=[{0: 1.0}] * 100).words_candidates_many([query()], before=False) == {}
    assert matcher(6.0, generic=[{0: 1.0}] * 100).words_candidates_many([query(created_at=50)]) == {}
    # ... and only then: generic photos at 0.45 would leave nothing at 2x; the full sample's 0.1 keeps two
    high = [{0: 4.5}] * 100
    assert matcher(2.0, short, generic=high).words_candidates_many([query()], before=False) == {}
    assert matcher(2.0, generic=high).words_candidates_many([query()], before=False) == {"q": ["r0", "r1"]}
    # 40 copies of one image at 0.45 in the sample: counted 40 times they would be the background
    # and nothing would stand out of it; their recorded original makes them one
    copies = [(f"c{n}", 200 + n, "", {0: 4.5}) for n in range(40)]
    sample = [(f"s{n}", n, "", {0: 1.0}) for n in range(100)]
    assert matcher(2.0, sample + copies).words_candidates_many([query()], before=False) == {}
    grouped = [(i, t, "c0", w) for i, t, _, w in copies]
    assert matcher(2.0, sample + grouped).words_candidates_many([query()], before=False) == {"q": ["r0", "r1"]}
    # the 17th..48th nearest raise the level where higher (a large index): 0.3 -> only r0 stands
    # out by 1.75; a group of copies among them counts once, and so do the batch's own images
    # (not decided yet) -- then too few remain and the sample's level stands
    scores[:] = [0.9, 0.4, 0.35] + [0.3] * 60
    assert matcher(1.75).words_candidates_many([query()], before=False) == {"q": ["r0"]}
    grouped_rows = {f"r{n}": {"original_id": "r1" if n >= 10 else ""} for n in range(63)}
    index = sample_index(search_many, rows=grouped_rows)
    assert Matcher(index, cal, 24, 10, lambda q, c: {}, words_candidates=4, words_max=16, words_min_ratio=1.75
                   ).words_candidates_many([query()], before=False) == {"q": ["r0", "r1", "r2", "r3"]}
    batch = [SimpleNamespace(id=f"r{n}", created_at=1000 + n, words=query().words) for n in range(10, 63)]
    level = Matcher(sample_index(search_many), cal, 24, 10, lambda q, c: {}, words_candidates=4, words_max=16,
                    words_min_ratio=1.75)
    found = level.words_candidates_many([query(), *batch], before=False)
    assert found["q"] == ["r0", "r1", "r2", "r3"]
    scores[:] = [0.50, 0.21, 0.12] + [0.1] * 60
    # the engine's Matchers share one BackgroundSample: queries reuse it, decisions read afresh
    shared, index = BackgroundSample(), sample_index(search_many)
    for before in (False, False, True, True):
        Matcher(index, cal, 24, 10, lambda q, c: {}, words_candidates=4, words_max=16, words_min_ratio=2.0,
                background_sample=shared).words_candidates_many([query()], before=before)
    assert shared.reads == 3


def test_band_candidates_are_verified_only_where_they_stand_out_in_the_words():
    """With NDID_VISUAL_WORDS_BAND_RATIO a pHash/descriptor candidate in the band is verified only if
    its words similarity reaches that many times the query's background; the others are capped at
    the band's edge like pairs beyond the verification cap. A query whose background is too short
    (few words), a query without words, and the words candidates themselves are not gated."""
    from ndid_tasks.index import Hit

    cal = default_calibration("random")
    words_hits = {"full": [0.50, 0.12] + [0.1] * 60, "few": [0.50, 0.12]}  # r2 is not among the hits
    asked: list[list[str]] = []

    def search_many(field, vectors, limit, latest, radius=None):
        return [[Hit(f"r{n}", n, s) for n, s in enumerate(words_hits[len(v) > 100 and "full" or "few"][:limit])]
                for v in vectors]

    near = np.zeros(64, np.float32)
    near[:20] = 1  # pHash distance 0.31 and cosine 0.3: inside the band
    rows = {f"r{n}": {"phash": near, "resnet": np.full(4, 0.15, np.float32)} for n in range(8)}
    index = sample_index(search_many, rows)

    def verify(query_id, cids):
        asked.append(list(cids))
        return {c: {"log_inliers": 0.0} for c in cids}

    def matcher(ratio):
        return Matcher(index, cal, 24, 10, verify, words_candidates=4, words_max=16, words_full=250,
                       band_words_ratio=ratio)

    def query(n_words):
        return SimpleNamespace(id=f"q{n_words}", created_at=1000, phash=np.zeros(64, np.float32),
                               resnet=np.full(4, 0.5, np.float32), words={w: 0.1 for w in range(n_words)})

    band = ["r0", "r1", "r2"]
    full = query(300)
    assert all(cal.band[0] < cal.stage1.probability(f) < cal.band[1] for _, f in matcher(0)._pairs(full, band))
    gated = matcher(1.5)
    words = gated.words_candidates_many([full], before=False)[full.id]
    scores = {s.candidate_id: s for s in gated.score(full, band)}
    assert asked[-1] == ["r0"]  # 0.50 >= 1.5 x 0.1 (the sample's level); 0.12 and 0.1 are not
    assert scores["r0"].stage == "stage2"
    assert {scores[c].stage for c in ("r1", "r2")} == {"unverified"}
    assert all(scores[c].probability <= gated.band[0] < cal.threshold for c in ("r1", "r2"))
    assert gated.stage2_plan([full], {full.id: band}, words={full.id: words}) == {full.id: ["r0"] + [
        w for w in words if w != "r0"]}
    gated.score(full, words, verify_all=True)
    assert sorted(asked[-1]) == sorted(words)  # words candidates: gated by their own setting only

    matcher(0.0).score(full, band)
    assert sorted(asked[-1]) == band
    few = query(50)
    gated.words_candidates_many([few], before=False)
    gated.score(few, band)
    assert sorted(asked[-1]) == band  # a small image: no background to stand out of
    bare = SimpleNamespace(**{**vars(query(0)), "id": "bare"})
    gated.score(bare, band)
    assert sorted(asked[-1]) == band
