"""Visual words: the vocabulary file, the sparse vectors and their staging (no servers)."""

import io
import json

import numpy as np
import pytest

from ndid_tasks.config import Settings
from ndid_tasks.images import load_image
from ndid_tasks.signals import GeometricSignal
from ndid_tasks.signals.geometry import SIFT_MIRROR
from ndid_tasks.signals.visual_words import (
    VisualWordsSignal,
    Vocabulary,
    VocabularyError,
    fit_vocabulary,
    generic_to_bytes,
    load_generic,
    pack_words,
    unpack_words,
)
from tests.conftest import jpeg_bytes


@pytest.fixture(scope="module")
def signal():
    return VisualWordsSignal(Vocabulary.load())


def words_of(signal, img, name="q"):
    return signal.compute([load_image(jpeg_bytes(img), name)])[0]


def tight_crop(img, side=0.4):
    """A crop of 16 % of the frame, shown at half the original's size (so enlarged)."""
    w, h = img.size
    x, y = int(w * 0.35), int(h * 0.3)
    return img.crop((x, y, x + int(w * side), y + int(h * side))).resize((w // 2, h // 2))


def test_packaged_vocabulary_round_trips_without_pickle(tmp_path):
    vocab = Vocabulary.load()
    assert len(vocab) == 16384 and vocab.version.startswith("vw16384-")
    assert vocab.coarse is not None and len(vocab.coarse) == 128 and vocab.mirror_invariant
    again = Vocabulary.from_bytes(vocab.to_bytes())
    assert again.version == vocab.version and again.meta["images"] == vocab.meta["images"]
    d = np.random.default_rng(0).random((50, 128), np.float32)
    assert np.array_equal(again.assign(d), vocab.assign(d))
    path = tmp_path / "v.npz"
    path.write_bytes(vocab.to_bytes())
    assert Vocabulary.load(path).version == vocab.version


def test_bad_vocabulary_files_are_a_clear_error(tmp_path):
    with pytest.raises(VocabularyError, match="no vocabulary file"):
        Vocabulary.load(tmp_path / "absent.npz")
    buf = io.BytesIO()  # an object array would need pickle: refused, not loaded
    np.savez(buf, meta=np.array([{"schema": "x"}], dtype=object), centroids=np.zeros((2, 128)), idf=np.ones(2))
    with pytest.raises(VocabularyError, match="not a readable"):
        Vocabulary.from_bytes(buf.getvalue())
    buf = io.BytesIO()
    meta = np.frombuffer(json.dumps({"schema": "ndid.visual_words/9"}).encode(), np.uint8)
    np.savez(buf, meta=meta, centroids=np.zeros((2, 128), np.float16), idf=np.ones(2, np.float32))
    with pytest.raises(VocabularyError, match="schema"):
        Vocabulary.from_bytes(buf.getvalue())
    with pytest.raises(VocabularyError, match="centroids"):
        Vocabulary(np.zeros((2, 64)), np.ones(2), {})
    with pytest.raises(VocabularyError, match="offsets"):  # a tree whose cells do not cover its words
        Vocabulary(np.zeros((4, 128)), np.ones(4), {}, np.zeros((2, 128)), np.array([0, 3, 3]))
    with pytest.raises(VocabularyError, match="both"):
        Vocabulary(np.zeros((4, 128)), np.ones(4), {}, np.zeros((2, 128)))


def test_a_flat_vocabulary_of_schema_1_still_loads_and_assigns_the_nearest_centroid():
    rng = np.random.default_rng(1)
    centroids = rng.random((16, 128)).astype(np.float16).astype(np.float32)
    buf = io.BytesIO()
    meta = {"schema": "ndid.visual_words/1", "mirror_invariant": True}  # (a reader of schema 1 ignores it)
    np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), centroids=centroids.astype(np.float16),
             idf=np.ones(16, np.float32))
    vocab = Vocabulary.from_bytes(buf.getvalue())
    assert vocab.coarse is None and not vocab.mirror_invariant
    d = rng.random((40, 128)).astype(np.float32)
    nearest = ((d[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert np.array_equal(vocab.assign(d), nearest)


def test_a_tree_assigns_the_nearest_word_of_the_nearest_coarse_cell():
    rng = np.random.default_rng(2)
    coarse = np.zeros((2, 128), np.float32)
    coarse[1, 0] = 10.0  # cell 1: descriptors with a large first bin
    words = rng.random((6, 128)).astype(np.float32)
    words[3:, 0] += 10.0
    vocab = Vocabulary(words, np.ones(6), {}, coarse, np.array([0, 3, 6]))
    d = rng.random((30, 128)).astype(np.float32)
    d[15:, 0] += 10.0
    cells = ((d[:, None, :] - coarse[None]) ** 2).sum(-1).argmin(1)
    got = vocab.assign(d)
    for n, c in enumerate(cells):
        inside = words[3 * c:3 * c + 3]
        assert got[n] == 3 * c + ((d[n] - inside) ** 2).sum(-1).argmin()
    assert set(got[:15]) <= {0, 1, 2} and set(got[15:]) <= {3, 4, 5}


def test_mirror_invariant_words_of_a_mirrored_photo_are_the_photos(signal, photos):
    """A flipped repost has the words of its original (the mirror-variant words of the same tree
    differ), and a flipped tight crop is nearest its original by words."""
    from PIL import ImageOps

    v = signal.vocabulary
    variant = VisualWordsSignal(Vocabulary(v.centroids, v.idf, {**v.meta, "mirror_invariant": False}, v.coarse, v.offsets))
    for name in ("astronaut", "coffee"):
        flipped = ImageOps.mirror(photos[name])
        assert signal.compare(words_of(signal, photos[name]), words_of(signal, flipped)) > 0.7  # (0.80)
        assert variant.compare(words_of(variant, photos[name]), words_of(variant, flipped)) < 0.3  # (0.08)
    ours = {name: words_of(signal, photos[name], name) for name in photos}
    q = words_of(signal, ImageOps.mirror(tight_crop(photos["chelsea"])))
    sims = {other: signal.compare(q, w) for other, w in ours.items()}
    assert max(sims, key=sims.get) == "chelsea", sims


def test_words_are_normalised_and_a_tight_crop_is_nearest_its_original(signal, photos):
    """A 16 %-area crop shares few pixels and little global look with its original, but its SIFT
    words are a subset of the original's: the original is its nearest photo by words."""
    ours = {name: words_of(signal, photos[name], name) for name in photos}
    for name in ("camera", "coins", "chelsea", "hubble_deep_field"):
        assert abs(sum(v * v for v in ours[name].values()) - 1) < 1e-4
        assert all(0 <= w < len(signal.vocabulary) for w in ours[name])
        q = words_of(signal, tight_crop(photos[name]))
        sims = {other: signal.compare(q, w) for other, w in ours.items()}
        assert max(sims, key=sims.get) == name, sims
    assert signal.compare(ours["camera"], ours["camera"]) == pytest.approx(1.0, abs=1e-4)
    assert words_of(signal, photos["colorwheel"]) == {}  # no keypoints, no words (and no row)


def test_words_of_a_batch_are_each_images_own(signal, photos):
    """One assignment for a whole batch (from_local_many) gives every image the words it gets alone,
    an image without keypoints included."""
    names = ["camera", "colorwheel", "coins", "chelsea"]
    local = signal.geometry.compute([load_image(jpeg_bytes(photos[n]), n) for n in names])
    assert len(local[1]) == 0 < min(len(local[0]), len(local[2]))
    alone = [signal.from_local(f) for f in local]
    assert signal.from_local_many(local) == alone and alone[1] == {} and all(alone[n] for n in (0, 2, 3))
    assert signal.from_local_many([]) == [] and signal.from_local_many([local[1]]) == [{}]


def test_staged_words_round_trip_including_absent_ones():
    vectors = [{3: 0.6, 10: 0.8}, None, {}, {4095: 1.0}]
    packed = pack_words(vectors)
    got = unpack_words(packed, len(vectors))
    assert got[0] == pytest.approx({3: 0.6, 10: 0.8}) and got[1] is None and got[2] == {} and got[3] == {4095: 1.0}
    assert unpack_words({}, 2) == [None, None]  # staged by a version without words


def test_the_packaged_generic_background_belongs_to_the_packaged_vocabulary(signal, photos, tmp_path):
    """The generic photos' words that stand in for a new index's sample: packaged for the packaged
    vocabulary, at least a sample's worth, normalised like an image's words; a file round-trips
    (weights to float16), and one made for another vocabulary is refused by path and left out when
    packaged (a custom vocabulary then has no generic background, as before)."""
    generic = load_generic(signal.vocabulary)
    assert len(generic) >= VisualWordsSignal.MIN_SAMPLE
    assert all(abs(sum(v * v for v in w.values()) - 1) < 1e-2 for w in generic)
    level = VisualWordsSignal.background(list(VisualWordsSignal.similarities([words_of(signal, photos["coffee"])],
                                                                            generic)[0]))
    assert level is not None and 0 < level < 0.5  # an unrelated photo's level, far under a copy's
    mine = [words_of(signal, photos[n], n) for n in ("astronaut", "coffee", "camera")]
    path = tmp_path / "generic.npz"
    path.write_bytes(generic_to_bytes(mine, signal.vocabulary, {"made_from": "three photos"}))
    again = load_generic(signal.vocabulary, path)
    assert [set(w) for w in again] == [set(w) for w in mine]
    assert all(again[n][k] == pytest.approx(mine[n][k], abs=1e-3) for n in range(3) for k in mine[n])
    other = fit_vocabulary(signal.geometry.compute([load_image(jpeg_bytes(photos["coins"]), "c")]), size=16, seed=1)
    with pytest.raises(VocabularyError, match="ndid words generic"):
        load_generic(other, path)
    assert load_generic(other) == []
    path.write_bytes(b"not an npz")
    with pytest.raises(VocabularyError, match="not a readable"):
        load_generic(signal.vocabulary, path)


def test_fitted_vocabulary_has_idf_from_the_photos(photos):
    geometry = GeometricSignal()
    feats = geometry.compute([load_image(jpeg_bytes(photos[n]), n) for n in ("astronaut", "coffee", "camera", "coins")])
    vocab = fit_vocabulary(feats, size=32, seed=1)
    assert len(vocab) == 32 and vocab.meta["images"] == 4 and vocab.coarse is None
    assert np.all(vocab.idf >= 0) and vocab.idf.max() > vocab.idf.min()  # common words weigh less
    assert fit_vocabulary(feats, size=32, seed=1).version == vocab.version  # seeded: reproducible
    with pytest.raises(VocabularyError, match="descriptors"):
        fit_vocabulary(feats[:1], size=100_000)
    tree = fit_vocabulary(feats, size=64, seed=1, branch=4, mirror_invariant=True)
    assert tree.coarse is not None and len(tree.coarse) == 4 and len(tree) <= 64 and tree.mirror_invariant
    assert Vocabulary.from_bytes(tree.to_bytes()).version == tree.version != vocab.version
    d = feats[0].descriptors.astype(np.float32)
    assert np.array_equal(tree.assign(d), tree.assign(d[:, SIFT_MIRROR]))  # a keypoint and its mirror: one word


def test_words_collection_is_named_by_the_vocabulary():
    s = Settings()
    assert s.words_collection("vw4096-0123456789") == "ndid_words_vw4096_0123456789"


def test_images_with_few_words_get_more_words_candidates_up_to_the_maximum():
    """4 candidates for an image with >= 250 distinct words; in inverse proportion below; at most 16."""
    from types import SimpleNamespace

    from ndid_tasks.calibration import default_calibration
    from ndid_tasks.decide import Matcher

    def matcher(words_candidates, words_max, words_index="words"):
        return Matcher(SimpleNamespace(words=words_index), default_calibration("random"), 24, 10, lambda q, c: {},
                       words_candidates=words_candidates, words_max=words_max, words_full=250)

    def words(n):
        return {k: 1.0 for k in range(n)}

    m = matcher(4, 16)
    assert [m.words_wanted(words(n)) for n in (400, 250, 200, 125, 100, 50, 10)] == [4, 4, 5, 8, 10, 16, 16]
    assert m.words_wanted({}) == m.words_wanted(None) == 0
    assert matcher(4, 0).words_wanted(words(10)) == 4  # a maximum below the base: the base
    assert matcher(0, 16).words_wanted(words(10)) == 0  # words not searched
    assert matcher(4, 16, words_index="").words_wanted(words(10)) == 0  # the index keeps no words


def test_the_background_is_the_mean_of_the_top_3_to_12_percent_of_a_sample_in_any_order():
    """A quantile of the query's similarities to a sample of the index: the same level whether the
    sample holds 128 or 256 images drawn from the same distribution (the 17th..48th nearest of
    the whole index rose with its size)."""
    rng = np.random.default_rng(0)
    small = [0.5, 0.5, 0.5, 0.5] + [0.2] * 12 + [0.01] * 112  # 128: ranks 4..15 are 0.2
    assert VisualWordsSignal.background(list(rng.permutation(small))) == pytest.approx(0.2)
    assert VisualWordsSignal.background(small * 2) == pytest.approx(0.2)
    # too small a sample (an index of fewer than 64 images): no background, every candidate stands
    assert VisualWordsSignal.background(small[:63]) is None
    assert VisualWordsSignal.background(small[:64]) == pytest.approx((0.5 * 2 + 0.2 * 4) / 6)


def test_the_background_is_the_higher_of_the_samples_quantile_and_the_17th_to_48th_nearest():
    """In a large index the best of many unrelated images climbs past the sample's quantile; the
    17th..48th nearest climb with it. The higher of the two; the nearest alone never make one."""
    sample = [0.5, 0.5, 0.5, 0.5] + [0.2] * 12 + [0.01] * 112  # its level: 0.2
    nearest = [0.9] * 16 + [0.3] * 32  # a large index: many unrelated images near 0.3
    assert VisualWordsSignal.background_of(sample, nearest) == pytest.approx(0.3)
    assert VisualWordsSignal.background_of(sample, [0.9] * 16 + [0.1] * 32) == pytest.approx(0.2)
    assert VisualWordsSignal.background_of(sample, [0.9] * 16 + [0.3] * 7) == pytest.approx(0.2)  # < 8 there
    assert VisualWordsSignal.background_of(sample, [0.9] * 16 + [0.3] * 8) == pytest.approx(0.3)
    assert VisualWordsSignal.background_of(sample[:63], nearest) is None  # a small index: none at all


def test_similarities_are_the_cosines_of_every_pair():
    a = [{0: 0.6, 5: 0.8}, {}, {2: 1.0}]
    b = [{5: 1.0}, {0: 0.6, 5: 0.8}, {9: 1.0}]
    sims = VisualWordsSignal.similarities(a, b)
    signal = VisualWordsSignal.__new__(VisualWordsSignal)
    assert sims.shape == (3, 3)
    assert sims == pytest.approx(np.array([[signal.compare(x, y) for y in b] for x in a]))
    assert sims[0, 1] == pytest.approx(1.0)
