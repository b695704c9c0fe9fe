"""Matching: candidates for an image, per-pair features, the gated two-stage decision, the record.

    exact sha256 match ──▶ duplicate (stage "exact")
    else candidates = pHash range search (wide radius) ∪ ResNet top-K, all strictly earlier
                      ∪ turned copies: pHash search with the query's 7 rotations/mirrors (tight
                        radius), each scored with the query turned that way (its "orientation")
                      ∪ visual words: the nearest by SIFT words (tight crops), always verified
         features per candidate ──▶ stage-1 LR ──▶ outside band: decided (stage "stage1")
                                                └─ inside band: + geometric verification
                                                   (+ CLIP cosine if the calibration uses it) ──▶ stage-2 LR
    best candidate with probability >= threshold ──▶ duplicate of that candidate's original
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .calibration import Calibration
from .features import stage1_features
from .index import Hit, ImageIndex, IndexedImage
from .scoring import PairScore, decision_band, is_duplicate, score_pairs, to_verify
from .signals.visual_words import VisualWordsSignal

log = logging.getLogger(__name__)

RECORD_SCHEMA = "ndid.decision/2"  # /2: stage "clip" -> "stage2", clip_pairs -> stage2_pairs
PHASH_CANDIDATES = 16  # most pHash neighbours taken from the radius search (nearest first)
SEARCH_SLACK = 8  # extra hits per batch search, for the batch's own later images (see candidates_many)
TURNED_CANDIDATES = 2  # nearest hits per rotation/mirror of the query's pHash (within the tight radius)


class BackgroundSample:
    """The words background's sample of the index (:meth:`ImageIndex.sample`) with the sampled
    images' stored words. Decisions read it afresh each batch (earlier batches' decisions regroup
    copies without changing the index's count); queries reuse it while the index's image count
    stays the same, for at most ``max_age_s``: a process answering queries (the benchmark, the
    review pages) reads it once a minute instead of once a query, ~40 ms of a ~280 ms query on
    Milvus Lite."""

    def __init__(self, max_age_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age_s = max_age_s
        self.clock = clock
        self.reads = 0
        self._kept: tuple[int, float, list[dict[str, Any]], dict[str, dict[int, float]]] | None = None

    def get(self, index: ImageIndex, reuse: bool = True) -> tuple[list[dict[str, Any]], dict[str, dict[int, float]]]:
        """(sampled rows with created_at and original_id, their stored words by id); ``reuse``:
        the kept ones where they are still current (see above)."""
        total = index.count()
        kept = self._kept
        if reuse and kept is not None and kept[0] == total and self.clock() - kept[1] < self.max_age_s:
            return kept[2], kept[3]
        rows = index.sample(VisualWordsSignal.SAMPLE, ["created_at", "original_id"], total=total)
        stored = index.get_words([r["id"] for r in rows])
        self.reads += 1
        self._kept = (total, self.clock(), rows, stored)
        return rows, stored


@dataclass
class DecisionRecord:
    """What NDID concluded about one object. Written as one JSON line."""

    id: str
    source: str
    decision: str  # duplicate | unique | error
    sha256: str = ""
    original_id: str = ""
    matched_id: str = ""
    probability: float = 0.0
    stage: str = ""  # exact | stage1 | stage2 | unverified | "" (unique with no candidates, or error)
    features: dict[str, float] = field(default_factory=dict)
    contributions: dict[str, float] = field(default_factory=dict)
    candidates: int = 0
    stage2_pairs: int = 0  # pairs sent to stage 2 (geometric verification, CLIP if calibrated); 0: none
    orientation: str = ""  # the match needed the image turned (e.g. ROTATE_90, FLIP_LEFT_RIGHT); "" = as is
    error_reason: str = ""
    error_message: str = ""
    calibration_version: str = ""
    weights_mode: str = ""
    untrained: bool = False
    run_id: str = ""
    created_at: str = ""  # when the object appeared (ISO)
    decided_at: str = ""  # the run's logical time (ISO), so a re-run writes identical records
    schema: str = RECORD_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Matcher:
    """Decides images against the index with one calibration.

    ``stage2_features(query_id, candidate_ids)`` returns the expensive features (CLIP cosine,
    geometric inliers) per candidate; it is called only for pairs in the ambiguous band.
    """

    def __init__(self, index: ImageIndex, calibration: Calibration, phash_radius: int, top_k: int,
                 stage2_features: Callable[[str, list[str]], dict[str, dict[str, float]]],
                 threshold: float | None = None, band: tuple[float, float] | None = None,
                 stage2_max: int = 3,
                 decide_earlier: Callable[[str, dict[str, str]], str] | None = None,
                 turned_radius: int = 0,
                 turned_descriptors: Callable[[list[tuple[str, str]]], dict[tuple[str, str], np.ndarray]] | None = None,
                 words_candidates: int = 0, words_max: int = 0, words_full: int = 250, words_min_ratio: float = 0.0,
                 band_words_ratio: float = 0.0,
                 faint_look: Callable[[str, list[tuple[str, float]]], dict[str, float]] | None = None,
                 background_sample: BackgroundSample | None = None,
                 words_generic: Sequence[dict[int, float]] = ()) -> None:
        """``background_sample``: one kept by the caller across Matchers (default: a fresh one);
        ``words_generic``: generic photos' words, the background while too few images are earlier
        (:attr:`VisualWordsSignal.generic`)."""
        self.index = index
        self.cal = calibration
        self.radius = phash_radius
        self.top_k = top_k
        self.stage2_features = stage2_features
        self.threshold = calibration.threshold if threshold is None else threshold
        wanted = calibration.band if band is None else band
        self.band = decision_band(wanted, self.threshold)
        if self.band != tuple(wanted):
            log.warning("ambiguous band %s starts at or above the threshold %.4g: stage 1 would accept pairs "
                        "below it unverified; verifying from %.4g up instead", tuple(wanted), self.threshold,
                        self.band[0])
        self.stage2_max = stage2_max
        # names the original of an earlier image that is indexed but not decided yet (another task
        # of the run decides it): see resolve_original
        self.decide_earlier = decide_earlier
        # turned copies (right-angle rotations, mirrors): found by pHash within ``turned_radius``
        # bits of a variant of the query's hash (0: off); ``turned_descriptors`` gives the query's
        # descriptor turned that way, {(image id, variant): vector} (missing: cannot be scored)
        self.turned_radius = turned_radius if turned_descriptors is not None else 0
        self.turned_descriptors = turned_descriptors
        # tight crops: the ``words_candidates`` nearest by visual words (where the index keeps them),
        # each verified whatever its stage-1 probability -- a tight crop's is low -- while stage 2 is on
        self.words_candidates = words_candidates if index.words else 0
        # a faint query (few SIFT keypoints) not decided a duplicate yet: ``faint_look`` gives raised
        # log(1 + inliers) of some of its verified candidates, {candidate: value} (see rank)
        self.faint_look = faint_look
        # ... for an image with >= ``words_full`` distinct words; fewer words (a small image, a tight
        # crop) get more candidates, in inverse proportion, up to ``words_max``: a pair's matching
        # costs query keypoints x candidate keypoints, so the verification budget stays that of a full image
        self.words_max = max(self.words_candidates, words_max)
        self.words_full = words_full
        # ... of which only those standing out of the query's background (VisualWordsSignal.background;
        # 0: all of them)
        self.words_min_ratio = words_min_ratio
        # pHash/descriptor candidates in the band are verified only where they stand out of the
        # query's words background by ``band_words_ratio`` too (0: all; needs the words search):
        # an unrelated photo's nearest gets a stage-1 probability inside the band with untrained
        # weights, and nothing else spares its verification. Per image: {hit: similarity}, level
        self.band_words_ratio = band_words_ratio if self.words_candidates else 0.0
        self._words_found: dict[str, tuple[dict[str, float], float | None]] = {}
        self.background_sample = background_sample or BackgroundSample()
        self.words_generic = list(words_generic)
        self._turned: dict[tuple[str, str], np.ndarray] = {}
        self.stage2_pairs = 0
        self.pairs = 0
        self._rows: dict[str, dict[str, Any]] = {}  # candidate rows fetched ahead (see prefetch)
        self._exact: dict[str, str | None] = {}

    def prefetch(self, images: Sequence[IndexedImage], candidates: dict[str, list[str]],
                 turned: dict[str, list[tuple[str, str]]] | None = None,
                 words: dict[str, list[str]] | None = None) -> None:
        """Fetch the candidates' vectors, the exact-copy answers and the turned queries'
        descriptors of many images in a few calls (instead of round trips per image)."""
        turned, words = turned or {}, words or {}
        ids = list(dict.fromkeys([c for im in images for c in candidates.get(im.id, [])]
                                 + [c for im in images for c, _ in turned.get(im.id, [])]
                                 + [c for im in images for c in words.get(im.id, [])]))
        self._rows = self.index.get_rows(ids, ["phash", "resnet"]) if ids else {}
        self._exact = self.index.earliest_with_sha256_many(images)
        wanted = list(dict.fromkeys((im.id, v) for im in images for _, v in turned.get(im.id, [])
                                    if not self._exact.get(im.id)))
        if wanted and self.turned_descriptors is not None:
            self._turned.update(self.turned_descriptors(wanted))

    def turned_image(self, image: IndexedImage, variant: str) -> IndexedImage | None:
        """The query as it would be indexed if it were turned by ``variant``, or were only that
        view of itself (None: its pixels are unreadable, so it cannot be scored that way)."""
        from .signals import PHashSignal

        key = (image.id, variant)
        if key not in self._turned and self.turned_descriptors is not None:
            self._turned.update(self.turned_descriptors([key]))
        if key not in self._turned:
            return None
        if variant in PHashSignal.VIEWS:
            k = PHashSignal.VIEWS.index(variant)
            if image.views is None or k >= len(image.views):
                return None
            phash = image.views[k]
        else:
            phash = PHashSignal.dihedral(image.phash)[[name for name, *_ in PHashSignal.DIHEDRAL].index(variant)]
        return dataclasses.replace(image, phash=phash, resnet=self._turned[key])

    def candidates(self, image: IndexedImage, before: bool = True) -> list[str]:
        return self.candidates_many([image], before)[image.id]

    def candidates_many(self, images: Sequence[IndexedImage], before: bool = True) -> dict[str, list[str]]:
        """pHash-radius ∪ ResNet top-K candidates for many images with two search calls (with
        ``before``, only images strictly earlier in ingestion order; see :meth:`_earlier_hits`)."""
        if not images:
            return {}
        phash = self._earlier_hits("phash", [im.phash for im in images], images, PHASH_CANDIDATES, self.radius, before)
        resnet = self._earlier_hits("resnet", [im.resnet for im in images], images, self.top_k, None, before)
        return {im.id: list(dict.fromkeys(phash[n][:PHASH_CANDIDATES] + resnet[n][:self.top_k]))
                for n, im in enumerate(images)}

    def turned_candidates_many(self, images: Sequence[IndexedImage], before: bool = True
                               ) -> dict[str, list[tuple[str, str]]]:
        """(candidate, variant) pairs per image: earlier images whose pHash is within the tight
        radius of one of the query's 7 rotations/mirrors (:meth:`PHashSignal.dihedral`) or of one
        of its other views' (:data:`PHashSignal.VIEWS`: a collage's quarters, a pair's halves, the
        picture untrimmed where it was trimmed), at most :data:`TURNED_CANDIDATES` per variant -- one batch search,
        exact like the others."""
        from .signals import PHashSignal

        if not images or self.turned_radius <= 0:
            return {}
        names = [name for name, *_ in PHashSignal.DIHEDRAL]
        searched = [(im, name, vector) for im in images
                    for name, vector in [*zip(names, PHashSignal.dihedral(im.phash), strict=True),
                                         *_other_views(im)]]
        # no slack: a hit within the tight radius is rare, and the crowded re-search keeps it exact
        hits = self._earlier_hits("phash", [v for _, _, v in searched], [im for im, _, _ in searched],
                                  TURNED_CANDIDATES, self.turned_radius, before, slack=0)
        out: dict[str, list[tuple[str, str]]] = {}
        for (im, name, _), found in zip(searched, hits, strict=True):
            for cid in found[:TURNED_CANDIDATES]:
                out.setdefault(im.id, []).append((cid, name))
        return out

    @property
    def stage2_on(self) -> bool:
        """An empty ambiguous band (NDID_AMBIGUOUS_LOW >= HIGH) switches stage 2 off, for every source."""
        return self.band[0] < self.band[1]

    def words_wanted(self, words: dict[int, float] | None) -> int:
        """How many words candidates an image with these visual words gets (see ``words_full``)."""
        if not words or not self.words_candidates:
            return 0
        scaled = round(self.words_candidates * self.words_full / len(words))
        return min(self.words_max, max(self.words_candidates, scaled))

    def words_candidates_many(self, images: Sequence[IndexedImage], before: bool = True) -> dict[str, list[str]]:
        """The nearest earlier images by visual words (:meth:`words_wanted` of them), per image with
        words (one batch search; none where the index keeps no words)."""
        owners = [im for im in images if im.words] if self.words_candidates else []
        if not owners:
            return {}
        wanted = {im.id: self.words_wanted(im.words) for im in owners}
        want = max(wanted.values())
        gated = self.words_min_ratio > 0 or self.band_words_ratio > 0
        if gated:  # the band's candidates stand out only among these nearest
            want = max(want, VisualWordsSignal.NEAREST)
        hits = self._earlier_found("words", [im.words for im in owners], owners, want, None, before)
        levels = self._backgrounds(owners, hits, before) if gated else {}
        out = {}
        for im, found in zip(owners, hits, strict=True):
            level = levels.get(im.id)
            if self.band_words_ratio > 0:
                nearest = found[:VisualWordsSignal.NEAREST]  # (whatever slack the search had)
                self._words_found[im.id] = ({h.id: h.score for h in nearest}, level)
            keep = found[:wanted[im.id]]
            if self.words_min_ratio > 0 and level is not None:
                keep = [h for h in keep if h.score >= self.words_min_ratio * level]
            if keep:
                out[im.id] = [h.id for h in keep]
        return out

    def _backgrounds(self, images: Sequence[IndexedImage], hits: Sequence[Sequence[Hit]], before: bool
                     ) -> dict[str, float]:
        """Each image's words background (:meth:`VisualWordsSignal.background_of`): from its
        similarities to one uniform sample of the earlier images and from its nearest ``hits`` (the
        words search's, best first), a group of copies (their recorded original) counted once at
        its best in both. One sample read per batch at most. While that sample holds fewer than
        :attr:`VisualWordsSignal.MIN_SAMPLE` earlier images (a new index), ``words_generic`` is the
        sample instead (none given: no background). None for an image with fewer than
        ``words_full`` words: a few words' similarity to anything is mostly chance, too noisy to
        stand out of, and verifying a small image is cheap (matching costs keypoints x keypoints);
        tight crops are such images (outside the dev set: 0.975 of their originals verified this
        way, 0.90 judged like full images; docs/benchmarks.md, session 17)."""
        judged = [im for im in images if im.words and len(im.words) >= self.words_full]
        if not judged:
            return {}
        rows, stored = self.background_sample.get(self.index, reuse=not before)  # (queries: before=False)
        rows = [r for r in rows if stored.get(r["id"])]  # (only images with words can be candidates)
        if len(rows) < VisualWordsSignal.MIN_SAMPLE and not self.words_generic:
            return {}
        queries = [im.words or {} for im in judged]
        sims = VisualWordsSignal.similarities(queries, [stored[r["id"]] for r in rows]) if rows \
            else np.zeros((len(judged), 0))
        generic: np.ndarray | None = None  # (the query's similarities to the generic photos, when needed)
        # (the batch's own images are left out of the nearest: not decided yet, a burst of copies
        # among them would be one another's background and hide the original)
        batch = {im.id for im in images}
        found = {im.id: [h for h in near[:VisualWordsSignal.NEAREST] if h.score > 0 and h.id not in batch]
                 for im, near in zip(images, hits, strict=True)}
        groups = self._groups([found[im.id] for im in judged])
        out = {}
        for n, (im, row) in enumerate(zip(judged, sims, strict=True)):
            best: dict[str, float] = {}
            for r, s in zip(rows, row, strict=True):
                if r["id"] != im.id and (not before or (r["created_at"], r["id"]) < (im.created_at, im.id)):
                    group = r.get("original_id") or r["id"]
                    best[group] = max(best.get(group, 0.0), float(s))
            nearest: dict[str, float] = {}
            for h in found[im.id]:  # (best first: a group keeps its best)
                nearest.setdefault(groups.get(h.id, h.id), h.score)
            sampled = list(best.values())
            if len(sampled) < VisualWordsSignal.MIN_SAMPLE and self.words_generic:
                if generic is None:
                    generic = VisualWordsSignal.similarities(queries, self.words_generic)
                sampled = list(generic[n])
            level = VisualWordsSignal.background_of(sampled, list(nearest.values()))
            if level is not None:
                out[im.id] = level
        return out

    def _groups(self, hits: Sequence[Sequence[Hit]]) -> dict[str, str]:
        """Each hit's group: its recorded original, itself where it has none (a unique image, or
        one not decided yet). One index read for the whole batch."""
        ids = list(dict.fromkeys(h.id for found in hits for h in found))
        rows = self.index.get_rows(ids, ["original_id"]) if ids else {}
        return {i: (rows.get(i) or {}).get("original_id") or i for i in ids}

    def worth_verifying(self, image: IndexedImage) -> Callable[[str], bool] | None:
        """Which of the image's band candidates stage 2 may verify (None: all): those standing out
        of its words background by ``band_words_ratio`` and among its
        :attr:`VisualWordsSignal.NEAREST` nearest by words. An image without a background (no
        words, few words, a small index) or whose words were not searched
        (:meth:`words_candidates_many` records them) keeps all."""
        if self.band_words_ratio <= 0:
            return None
        found, level = self._words_found.get(image.id, ({}, None))
        if level is None:
            return None
        floor = self.band_words_ratio * level
        return lambda cid: found.get(cid, 0.0) >= floor

    def _earlier_hits(self, field_name: str, vectors: Sequence[Any], owners: Sequence[IndexedImage],
                      want: int, radius: float | None, before: bool, slack: int = SEARCH_SLACK) -> list[list[str]]:
        """:meth:`_earlier_found`'s ids."""
        return [[h.id for h in found]
                for found in self._earlier_found(field_name, vectors, owners, want, radius, before, slack)]

    def _earlier_found(self, field_name: str, vectors: Sequence[Any], owners: Sequence[IndexedImage],
                       want: int, radius: float | None, before: bool, slack: int = SEARCH_SLACK) -> list[list[Hit]]:
        """Nearest hits for each vector, only images strictly earlier than its owner (with
        ``before``). The batch search asks for ``slack`` extra hits, room for the batch's own later
        images, which are filtered out afterwards; vectors that lost more than that are searched
        again with room for the whole batch -- so the result always equals a per-image search,
        while Milvus returns few hits (its cost grows with the hit count)."""
        batch = len({im.id for im in owners})
        slack = min(batch, slack) if before else 0
        latest = max(im.created_at for im in owners) if before else None

        def earlier(hits, im):
            key = (im.created_at, im.id)
            return [h for h in hits if h.id != im.id and (not before or (h.created_at, h.id) < key)]

        hits = self.index.search_many(field_name, list(vectors), want + slack, latest, radius=radius)
        found = [earlier(h, im) for h, im in zip(hits, owners, strict=True)]
        crowded = [n for n, (h, ok) in enumerate(zip(hits, found, strict=True))
                   if before and len(ok) < want and len(h) == want + slack]
        if crowded:  # enough room for every later image of the batch: exact
            again = self.index.search_many(field_name, [vectors[n] for n in crowded], want + batch, latest,
                                           radius=radius)
            for n, h in zip(crowded, again, strict=True):
                found[n] = earlier(h, owners[n])
        return found

    def _pairs(self, image: IndexedImage, candidate_ids: list[str]) -> list[tuple[str, dict[str, float]]]:
        """(candidate, stage-1 features) for the candidates still in the index."""
        missing = [c for c in candidate_ids if c not in self._rows]
        rows = {**self._rows, **(self.index.get_rows(missing, ["phash", "resnet"]) if missing else {})}
        return [(cid, stage1_features(np.asarray(image.phash), np.asarray(rows[cid]["phash"], np.float32),
                                      np.asarray(image.resnet), np.asarray(rows[cid]["resnet"], np.float32)))
                for cid in candidate_ids if cid in rows]  # (a row deleted between search and fetch: gone)

    def stage2_plan(self, images: Sequence[IndexedImage], candidates: dict[str, list[str]],
                    turned: dict[str, list[tuple[str, str]]] | None = None,
                    words: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
        """Which candidates of each image will reach stage 2 (so their CLIP vectors and local
        features can be computed in batches first). Exact copies never need it."""
        plan = {}
        for im in images:
            if self._exact.get(im.id):
                continue
            worth = self.worth_verifying(im)
            chosen = [cid for cid, _, _ in to_verify(self.cal, self._pairs(im, candidates.get(im.id, [])),
                                                     self.band, self.stage2_max, worth)[0]]
            for variant, cids in _by_variant((turned or {}).get(im.id, [])).items():
                aligned = self.turned_image(im, variant)
                if aligned is not None:
                    chosen += [cid for cid, _, _ in to_verify(self.cal, self._pairs(aligned, cids), self.band,
                                                              self.stage2_max, worth if _words_gated(variant) else None)[0]]
            if self.stage2_on:
                chosen += (words or {}).get(im.id, [])
            if chosen:
                plan[im.id] = list(dict.fromkeys(chosen))
        return plan

    def score(self, image: IndexedImage, candidate_ids: list[str], verify_all: bool = False,
              gated: bool = True) -> list[PairScore]:
        """The candidates' scores, best first (:func:`ndid_tasks.scoring.score_pairs`); the
        expensive features come from ``stage2_features`` for the pairs stage 2 reads -- with
        ``verify_all`` for every candidate, whatever its stage-1 probability (visual-words
        candidates: found by their local features, judged by them); without ``gated``, band
        candidates are verified whatever the words say (:meth:`worth_verifying`)."""
        if not candidate_ids:
            return []
        pairs = self._pairs(image, candidate_ids)
        self.pairs += len(pairs)
        band, cap = ((0.0, 1.0), len(pairs)) if verify_all else (self.band, self.stage2_max)
        worth = None if verify_all or not gated else self.worth_verifying(image)
        scores = score_pairs(self.cal, pairs, lambda cids: self.stage2_features(image.id, cids), band, cap, worth)
        self.stage2_pairs += sum(1 for s in scores if s.stage == "stage2")
        return scores

    def score_turned(self, image: IndexedImage, turned: list[tuple[str, str]]) -> list[PairScore]:
        """Scores of turned candidates, each pair measured with the query turned its way (so a
        rotated copy has the features of a plain one and the same calibration applies). A
        view's candidates are not gated by the words: a quarter's other three cells (a half's
        other half) dilute the query's words (its original seldom stands out in them), damage
        that fooled the trim has often thinned them too, and a view's pHash within the tight
        radius is rare among images with no copy (:data:`PHashSignal.VIEWS`)."""
        scores = []
        for variant, cids in _by_variant(turned).items():
            aligned = self.turned_image(image, variant)
            if aligned is not None:
                scores += [dataclasses.replace(s, orientation=variant)
                           for s in self.score(aligned, cids, gated=_words_gated(variant))]
        return scores

    def rank(self, image: IndexedImage, candidates: list[str] | None = None,
             turned: list[tuple[str, str]] | None = None, before: bool = True,
             words: list[str] | None = None) -> list[PairScore]:
        """Every candidate's score, best first, each candidate once (as it is, turned, or verified
        as a visual-words candidate, whichever scores higher): the one ranking that decisions,
        ``ndid query`` and the benchmark use."""
        cands = self.candidates(image, before) if candidates is None else candidates
        if turned is None:
            turned = self.turned_candidates_many([image], before).get(image.id, [])
        if words is None:
            words = self.words_candidates_many([image], before).get(image.id, [])
        scores = self.score(image, cands) + self.score_turned(image, turned)
        settled = {s.candidate_id for s in scores if s.stage == "stage2" or s.probability >= self.band[1]}
        scores += self.score(image, [c for c in words if c not in settled], verify_all=self.stage2_on)
        scores.sort(key=lambda s: (-s.probability, s.orientation != "", s.candidate_id))
        best: dict[str, PairScore] = {}
        for s in scores:
            best.setdefault(s.candidate_id, s)
        return self._after_faint_look(image, list(best.values()))

    def _after_faint_look(self, image: IndexedImage, ranked: list[PairScore]) -> list[PairScore]:
        """The ranking after one faint look for the whole query, once all its candidates were
        verified, unless its best pair is a duplicate already (a look only adds inliers). A verified
        pair is not a decision: a tight crop's 12-15 inliers under a low global similarity stay
        below the threshold, where the look finds 16-39. The pairs it raised are scored again by
        stage 2. They are offered in :meth:`look_order` (GeometricSignal.faint_look puts those
        above chance first): in the stage-2 probability 3 chance inliers outweigh the global
        similarity, so the stage-2 ranking is not the order to look in."""
        if self.faint_look is None or (ranked and is_duplicate(ranked[0], self.threshold)):
            return ranked
        verified = self.look_order(image, [s for s in ranked if s.stage == "stage2" and "log_inliers" in s.features])
        raised = self.faint_look(image.id, [(s.candidate_id, s.features["log_inliers"]) for s in verified]) \
            if verified else {}
        if not raised:
            return ranked
        def again(s: PairScore) -> PairScore:
            feats = {**s.features, "log_inliers": raised[s.candidate_id]}
            return dataclasses.replace(s, features=feats, probability=self.cal.stage2.probability(feats),
                                       contributions=self.cal.stage2.contributions(feats))

        ranked = [again(s) if s.candidate_id in raised else s for s in ranked]
        ranked.sort(key=lambda s: (-s.probability, s.orientation != "", s.candidate_id))
        return ranked

    def look_order(self, image: IndexedImage, verified: list[PairScore]) -> list[PairScore]:
        """The verified pairs in the order a faint look takes them: best by stage 1 and best by
        visual words in turn (each pair once). Two views of what the query shares with a
        candidate, each better in its own case: with untrained weights a tight crop's global
        similarity to its original is near chance (faint crops in the dev and outside sets: the
        original was ranked last of 8-9 by stage 1 in 22 of 65, first by words in 60), while
        trained weights make stage 1 the better guide. Taking both in turn gives at most every
        other look to the weaker one, whichever it is."""
        words = self._words_found.get(image.id, ({}, None))[0]
        by_stage1 = sorted(verified, key=lambda s: -self.cal.stage1.probability(s.features))
        by_words = sorted((s for s in verified if words.get(s.candidate_id, 0.0) > 0),
                          key=lambda s: -words[s.candidate_id])
        order: dict[str, PairScore] = {}
        for pair in (p for both in itertools.zip_longest(by_stage1, by_words) for p in both if p is not None):
            order.setdefault(pair.candidate_id, pair)
        return list(order.values())

    def decide(self, image: IndexedImage, originals: dict[str, str],
               candidates: list[str] | None = None, turned: list[tuple[str, str]] | None = None,
               words: list[str] | None = None) -> DecisionRecord:
        """Decide one image. ``originals`` maps already-decided ids to their original (updated here);
        ``candidates``, ``turned`` and ``words`` may come precomputed from :meth:`candidates_many`,
        :meth:`turned_candidates_many` and :meth:`words_candidates_many`."""
        record = DecisionRecord(id=image.id, source=image.source, decision="unique", sha256=image.sha256,
                                original_id=image.id)
        exact = (self._exact[image.id] if image.id in self._exact
                 else self.index.earliest_with_sha256(image.sha256, image.created_at, image.id))
        if exact is not None:
            record.decision, record.stage, record.probability = "duplicate", "exact", 1.0
            record.matched_id = exact
            record.features = {"sha256_equal": 1.0}
        else:
            cands = self.candidates(image) if candidates is None else candidates
            if turned is None:
                turned = self.turned_candidates_many([image]).get(image.id, [])
            if words is None:
                words = self.words_candidates_many([image]).get(image.id, [])
            record.candidates = len(set(cands) | {c for c, _ in turned} | set(words))
            scores = self.rank(image, cands, turned, words=words)
            if scores:
                best = scores[0]
                record.orientation = best.orientation
                record.features, record.contributions = best.features, best.contributions
                record.probability, record.stage = best.probability, best.stage
                record.matched_id = best.candidate_id
                if is_duplicate(best, self.threshold):
                    record.decision = "duplicate"
        if record.decision == "duplicate":
            record.original_id = self.resolve_original(record.matched_id, originals)
        elif record.probability <= 0:
            record.matched_id = record.orientation = ""
        originals[image.id] = record.original_id
        return record

    def resolve_original(self, matched_id: str, originals: dict[str, str]) -> str:
        """The earliest member of the matched image's group (its recorded original, else itself).

        An earlier image that is indexed but not decided yet (its batch is decided by another task,
        which may run later or in parallel) is decided here first, so the original never depends on
        the order in which a run's tasks happen to run."""
        if matched_id in originals:
            return originals[matched_id]
        row = self.index.get_rows([matched_id], ["original_id", "decision"]).get(matched_id)
        if row is not None and not row.get("decision") and self.decide_earlier is not None:
            original = self.decide_earlier(matched_id, originals)
        else:
            original = (row or {}).get("original_id") or matched_id
        originals[matched_id] = original
        return original


def _words_gated(variant: str) -> bool:
    """Whether a turned candidate of this variant must stand out in the words to be verified: a
    view's need not (see :meth:`Matcher.score_turned`)."""
    from .signals import PHashSignal

    return variant not in PHashSignal.VIEWS


def _other_views(image: IndexedImage) -> list[tuple[str, np.ndarray]]:
    """The image's views (:data:`PHashSignal.VIEWS`) with a pHash of their own: the untrimmed
    picture only where a trim changed the hash, the inset only where a frame was found (else it
    is the untrimmed picture). A batch staged before a view existed has fewer."""
    from .signals import PHashSignal

    if image.views is None:
        return []
    views = dict(zip(PHashSignal.VIEWS, image.views, strict=False))
    same_as = {PHashSignal.UNTRIMMED: image.phash, PHashSignal.INSET: views.get(PHashSignal.UNTRIMMED, image.phash)}
    return [(name, vector) for name, vector in views.items()
            if name not in same_as or not np.array_equal(vector, same_as[name])]


def _by_variant(turned: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for cid, variant in turned:
        out.setdefault(variant, []).append(cid)
    return out
