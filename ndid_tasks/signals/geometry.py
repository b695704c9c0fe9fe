"""Geometric verification: SIFT features (stored at ingest), ratio test, RANSAC inliers; stage 2."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np
from PIL import Image

from ..config import Settings
from ..images import LoadedImage
from .base import PairFeature, Signal


def _sift_mirror_permutation() -> np.ndarray:
    """Where each of SIFT's 128 descriptor bins goes when the image is mirrored left-right.

    OpenCV's descriptor is 4x4 spatial cells x 8 orientation bins in the keypoint's own frame;
    mirroring the image flips that frame's rows and negates gradient angles. Measured: 92 % of the
    keypoints of a mirrored image match these permuted descriptors almost exactly, and a photo
    against its own mirror gets 406 distinct inliers (421 against itself) -- so the mirrored
    query costs a permutation instead of a second SIFT pass.
    """
    r, c, o = np.meshgrid(np.arange(4), np.arange(4), np.arange(8), indexing="ij")
    return (((3 - r) * 4 + c) * 8 + (8 - o) % 8).ravel()


SIFT_MIRROR = _sift_mirror_permutation()  # (an involution: mirroring twice is the identity)

# pixels(k): candidate k's picture at full resolution, pixels(None): the query's (None: unavailable)
Pixels = Callable[[int | None], "Image.Image | None"]


def _described(sift: Any, picture: Image.Image, side: int) -> LocalFeatures:
    """``sift``'s keypoints of the grey ``picture`` shrunk to at most ``side`` (points in that frame)."""
    grey = picture.convert("L")
    grey.thumbnail((side, side))
    kp, desc = sift.detectAndCompute(np.asarray(grey), None)
    return LocalFeatures(np.array([k.pt for k in kp], dtype=np.float32).reshape(-1, 2), desc)


def _sift_workers() -> int:
    """The cores this process may use (its CPU affinity, as torch's default thread count sees it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def described_all(pictures: Sequence[Image.Image], side: int, **sift_params: Any) -> list[LocalFeatures]:
    """:func:`_described` for each picture, one picture per core at a time (a SIFT of its own on
    each): OpenCV releases the GIL, and one SIFT call keeps only part of the cores busy -- measured
    on 2 cores, 96 photos at 384 px: 26-29 ms a picture one at a time, 12-13 ms two at a time, the
    same keypoints and descriptors. A fresh pool per call: nothing lingers across a fork."""
    import cv2

    def one(picture: Image.Image) -> LocalFeatures:
        return _described(cv2.SIFT_create(**sift_params), picture, side)  # type: ignore[attr-defined]  # (no stub)

    workers = min(len(pictures), _sift_workers())
    if workers <= 1:
        return [one(p) for p in pictures]
    with ThreadPoolExecutor(workers, thread_name_prefix="ndid-sift") as pool:
        return list(pool.map(one, pictures))


def _corners(points: np.ndarray) -> np.ndarray:
    """The four corners of the points' bounding box (the frame the keypoints cover)."""
    (x0, y0), (x1, y1) = points.min(0), points.max(0)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)


def _window(mapped: np.ndarray, onto: np.ndarray) -> np.ndarray | None:
    """The box (x0, y0, x1, y1) that ``mapped`` corners cover inside the frame of the ``onto``
    points, padded by 15 % -- when it is at most GeometricSignal.zoom_share of that frame and
    at least 16 px a side; else None (no crop to look closer at)."""
    (fx0, fy0), (fx1, fy1) = onto.min(0), onto.max(0)
    (x0, y0), (x1, y1) = mapped.min(0), mapped.max(0)
    pad_x, pad_y = 0.15 * (x1 - x0), 0.15 * (y1 - y0)
    x0, y0, x1, y1 = max(x0 - pad_x, fx0), max(y0 - pad_y, fy0), min(x1 + pad_x, fx1), min(y1 + pad_y, fy1)
    frame = max((fx1 - fx0) * (fy1 - fy0), 1.0)
    if x1 - x0 < 16 or y1 - y0 < 16 or (x1 - x0) * (y1 - y0) > GeometricSignal.zoom_share * frame:
        return None
    return np.array([x0, y0, x1, y1])


class LocalFeatures:
    """SIFT keypoints of an image; descriptors as uint8 (SIFT's values are 0..255 integers, so this
    is lossless and 4x smaller than OpenCV's float32)."""

    __slots__ = ("descriptors", "points")

    def __init__(self, points: np.ndarray, descriptors: np.ndarray | None) -> None:
        self.points = points
        self.descriptors = None if descriptors is None else np.clip(np.rint(descriptors), 0, 255).astype(np.uint8)

    @property
    def nbytes(self) -> int:
        return self.points.nbytes + (0 if self.descriptors is None else self.descriptors.nbytes)

    def __len__(self) -> int:
        return 0 if self.descriptors is None else len(self.descriptors)

    def mirrored(self) -> LocalFeatures:
        """The features of the left-right mirrored image, without running SIFT again (x is negated:
        homographies absorb the shift)."""
        if self.descriptors is None:
            return self
        out = LocalFeatures(self.points * np.array([-1, 1], dtype=np.float32), None)
        out.descriptors = self.descriptors[:, SIFT_MIRROR]
        return out


class GeometricSignal(Signal):
    """Geometric verification: SIFT, ratio test, one-to-one matches, RANSAC homography inliers.

    :meth:`verify_many` returns, per candidate, the number of *distinct* inlier points: repeated
    matches onto blank backgrounds cannot inflate it, and no scale limit is imposed, so thumbnails
    verify. Mirrored copies: the query's mirrored features (a descriptor permutation) are matched
    too, and RANSAC runs on them unless the direct match is already conclusive. All candidates of a query
    are matched in one matrix product: ~1.5 ms a pair with its mirror (OpenCV's brute-force
    matcher plus a homography RANSAC took 6.5 ms, and the mirror a second SIFT pass of 30 ms).
    Extraction (~18 ms an image at 384 px) is the rest, hence only for ambiguous pairs, and each
    image's features are kept. A weak match that looks like a tight crop gets a closer look at
    full resolution (:meth:`closer_look`); a faint query that verifies nothing, a faint look at a
    lower contrast threshold (:meth:`faint_look`).
    """

    name, dim = "geometry", 0
    pair_features = (PairFeature("log_inliers", 2, "geometry", 0.0, False,
                                 "log(1 + distinct RANSAC inliers of the SIFT matches)"),)
    ratio = 0.8
    ransac_px = 5.0
    verified = 12  # distinct inliers above which a pair is geometrically verified (unrelated: <= 7, see chance)
    # the query's mirror is matched too unless the direct match has this many: a mirrored copy's
    # direct match finds 14 (median) to 56 inliers on blob-like keypoints, whose descriptors barely
    # change under a reflection and which a reflecting map fits (160 mirrored photos outside the
    # dev set), where its mirror finds 45-400; with the old bar, ``verified``, 62-72 % of them kept
    # the direct count. At 100 the pair is a duplicate whatever its mirror says
    mirror_below = 100
    affine_gate = 6  # fewer affine inliers than this: no homography RANSAC (see _inliers)

    def __init__(self, max_features: int = 500, max_side: int = 384, faint_pairs: int = 4) -> None:
        self.max_features = max_features
        self.max_side = max_side
        self.faint_pairs = faint_pairs  # faint looks per query (see faint_look; 0: off)
        self.closer_looks = 0  # pairs verified again on a window (see closer_look)
        self.faint_looks = 0  # pairs matched again at a lower contrast threshold (see faint_look)

    higher_is_closer = True  # distinct inliers

    @classmethod
    def from_settings(cls, settings: Settings) -> GeometricSignal:
        return cls(settings.sift_features, settings.sift_max_side, settings.faint_look_pairs)

    @classmethod
    def for_settings(cls, settings: Settings) -> GeometricSignal:
        return cls.from_settings(settings)

    def compute(self, images: Sequence[LoadedImage]) -> list[LocalFeatures]:
        return self.compute_pictures([im.image for im in images])

    def compute_pictures(self, pictures: Sequence[Image.Image]) -> list[LocalFeatures]:
        """SIFT of each picture shrunk to :attr:`max_side` (points in that frame's pixels)."""
        return described_all(pictures, self.max_side, nfeatures=self.max_features)

    def compare(self, a: LocalFeatures, b: LocalFeatures) -> float:
        """Distinct inliers of ``a`` on ``b`` (no mirroring)."""
        return float(self.verify_many(a, [b], mirror=False)[0])

    def verify(self, query: LocalFeatures, candidate: LocalFeatures,
               pictures: tuple[Image.Image, Image.Image] | None = None) -> float:
        """Distinct inliers of the query (or, when that is weak, of its mirror) on the candidate;
        with the (query, candidate) ``pictures``, a weak crop-like match gets a closer look and a
        faint query a faint look."""
        if pictures is None:
            return float(self.verify_many(query, [candidate])[0])
        found = self.verify_many(query, [candidate], pixels=lambda k: pictures[0] if k is None else pictures[1])
        return float(self.faint_look(query, found, lambda keys: self.faint_described(
            [pictures[0 if k is None else 1] for k in keys]))[0])

    def verify_many(self, query: LocalFeatures, candidates: Sequence[LocalFeatures],
                    mirror: bool = True, pixels: Pixels | None = None) -> list[int]:
        """Distinct inliers of the query on each candidate: max(direct, mirrored), where the
        mirror is tried only when the direct match has fewer than :attr:`mirror_below` inliers.

        With ``pixels`` (``pixels(k)``: candidate ``k``'s picture at full resolution, ``pixels(None)``
        the query's; None where unavailable), a weak match whose affine map puts one image into a
        small window of the other is verified again on that window at full resolution
        (:meth:`closer_look`): a tight crop shows only a few % of the other image's keypoints."""
        out = [0] * len(candidates)
        maps: list[tuple[int, np.ndarray, bool] | None] = [None] * len(candidates)
        usable = [k for k, c in enumerate(candidates) if len(c) >= 4]
        if len(query) < 4 or not usable:
            return out
        sides = [query, query.mirrored()] if mirror else [query]
        rows = np.concatenate([s.descriptors for s in sides]).astype(np.float32)
        cols = np.concatenate([candidates[k].descriptors for k in usable]).astype(np.float32)
        # squared L2 distance minus the row's own |q|^2 (constant along a row, so the nearest two
        # are found without it and it is added back to those two only): |c|^2 - 2 q.c
        dist = rows @ (-2.0 * cols).T
        dist += (cols * cols).sum(1)[None, :]
        row_norm = (rows * rows).sum(1)
        n, start = len(query), 0
        for k in usable:
            stop = start + len(candidates[k])
            for s, side in enumerate(sides):
                if s and out[k] >= self.mirror_below:
                    break
                src, dst = self._tentative(dist[s * n:(s + 1) * n, start:stop], row_norm[s * n:(s + 1) * n])
                if len(src) >= 4:
                    count, affine, agreeing = self._inliers(side.points[src], candidates[k].points[dst],
                                                            (side.points, candidates[k].points))
                    out[k] = max(out[k], count)
                    best = maps[k]
                    if affine is not None and (best is None or agreeing > best[0]):
                        maps[k] = (agreeing, affine, bool(s))
            start = stop
        if pixels is None:
            return out
        weak = [(k, found) for k in usable if (found := maps[k]) is not None
                and out[k] < self.zoom_below and found[0] >= self.zoom_min]
        weak.sort(key=lambda kf: -kf[1][0])
        for k, (_, affine, mirrored) in weak[:self.zoom_pairs]:  # the most agreeing first
            out[k] = max(out[k], self.closer_look(query, candidates[k], affine, mirrored,
                                                  partial(pixels, k), partial(pixels, None)))
        return out

    # a faint look (see faint_look): a query with fewer keypoints than faint_below at SIFT's default
    # contrast threshold is matched again at faint_contrast, both pictures at up to faint_side with
    # up to faint_features keypoints; at most faint_pairs candidates (NDID_FAINT_LOOK_PAIRS), those
    # with more than chance inliers first
    chance = 6  # distinct inliers that unrelated pairs reach (7 in 13 of the 377,146 pairs of 869 real photos)
    faint_below = 100
    faint_contrast = 0.01
    faint_side = 768
    faint_features = 4000

    def faint_look(self, query: LocalFeatures, inliers: Sequence[int],
                   described: Callable[[Sequence[int | None]], list[LocalFeatures | None]]) -> list[int]:
        """``inliers`` (of the query's candidates, in the order to look at them) after a faint look:
        a faint query (sky, water, grass, a wall: a small tight crop of them has 0-9 keypoints at
        SIFT's default contrast, nothing to match or to find a window with) is matched again on
        :attr:`faint_pairs` of them, both sides described at :attr:`faint_contrast` (``described(keys)``:
        per key, candidate ``k``'s or, for None, the query's description; see :meth:`faint_described`;
        None where unavailable). Those with more than :attr:`chance` inliers come first, the most
        first (a faint crop's original may verify 7-15 at the default contrast and 16-39 here, yet
        rank low by the untrained global descriptor), then the rest in the given order. A look
        never lowers a count. The caller runs it once per query, after all its candidates were
        verified, and not for a query already decided: each look costs a re-read and a SIFT pass
        (the candidates' passes side by side). Only the query's faintness counts: faint images in
        the index are candidates of many queries."""
        out = list(inliers)
        if not self.faint_pairs or len(query) >= self.faint_below:
            return out
        # (a stable sort: the given order among the rest)
        looks = sorted(range(len(out)), key=lambda k: -out[k] if out[k] > self.chance else 0)[:self.faint_pairs]
        mine = described([None])[0] if looks else None
        if mine is None:
            return out
        for k, found in zip(looks, described(looks), strict=True):
            if found is not None:
                self.faint_looks += 1
                out[k] = max(out[k], self.verify_many(mine, [found])[0])
        return out

    def faint_described(self, pictures: Sequence[Image.Image | None]) -> list[LocalFeatures | None]:
        """SIFT at :attr:`faint_contrast` of each picture shrunk to :attr:`faint_side` (None for a
        missing picture or one with under 4 keypoints even so)."""
        found = iter(described_all([p for p in pictures if p is not None], self.faint_side,
                                   nfeatures=self.faint_features, contrastThreshold=self.faint_contrast))
        out: list[LocalFeatures | None] = []
        for picture in pictures:
            described = None if picture is None else next(found)
            out.append(described if described is not None and len(described) >= 4 else None)
        return out

    # a closer look (see closer_look): for matches weaker than this many distinct inliers, where
    # at least zoom_min matches agree on an affine map that puts one image into a window of at
    # most zoom_share of the other's frame
    zoom_below = 40
    zoom_min = 5
    zoom_share = 0.3
    zoom_pairs = 3  # closer looks per call (one query's candidates), the most agreeing first: each may decode

    def closer_look(self, query: LocalFeatures, candidate: LocalFeatures, affine: np.ndarray, mirrored: bool,
                    candidate_pixels: Callable[[], Image.Image | None],
                    query_pixels: Callable[[], Image.Image | None]) -> int:
        """Distinct inliers after re-extracting SIFT on the window of the larger-looking image that
        the weak match's ``affine`` (query -> candidate, on the mirrored query when ``mirrored``)
        says the other one shows, from its full-resolution pixels. 0 when the map does not look
        like a crop (not a plausible similarity, or no small window), or the pixels are missing.

        Why: at :attr:`max_side` the whole frame shares :attr:`max_features` keypoints, so the 5 %
        of it that a tight crop shows holds ~25 of them, at a quarter of the crop's own scale."""
        linear = affine[:, :2]
        scales = np.linalg.svd(linear, compute_uv=False)
        if np.linalg.det(linear) <= 0 or scales[1] <= 0 or scales[0] / scales[1] > 3:
            return 0
        q_points = query.points * (np.array([-1, 1], np.float32) if mirrored else 1)
        into_candidate = _window(_corners(q_points) @ linear.T + affine[:, 2], candidate.points)
        if into_candidate is not None:
            self.closer_looks += 1
            found = self._window_features(candidate_pixels(), into_candidate)
            return self.verify_many(query, [found])[0] if found is not None else 0
        inverse = np.linalg.inv(linear)
        back = (_corners(candidate.points) - affine[:, 2]) @ inverse.T
        if mirrored:
            back = back * np.array([-1, 1])
        into_query = _window(back, query.points)
        if into_query is not None:
            self.closer_looks += 1
            found = self._window_features(query_pixels(), into_query)
            return self.verify_many(found, [candidate])[0] if found is not None else 0
        return 0

    def _window_features(self, picture: Image.Image | None, box: np.ndarray) -> LocalFeatures | None:
        """SIFT of ``box`` (x0, y0, x1, y1 in the :attr:`max_side` frame) cut from ``picture`` and
        shrunk to at most :attr:`max_side` (points in the window's own pixels: RANSAC fits its
        own map, and the 2-px grid of distinct inliers stays at the resolution they were found at)."""
        if picture is None:
            return None
        w, h = picture.size
        scale = max(w, h) / min(self.max_side, max(w, h))  # full-resolution pixels per frame pixel
        x0, y0, x1, y1 = (box * scale).round().astype(int)
        found = self.compute_pictures([picture.crop((max(0, x0), max(0, y0), min(w, x1), min(h, y1)))])[0]
        return found if len(found) >= 4 else None

    def _tentative(self, dist: np.ndarray, row_norm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ratio-test matches (query row -> candidate column), one-to-one: each candidate point
        keeps only its closest query point. ``dist`` (|c|^2 - 2 q.c, see :meth:`verify_many`) is
        overwritten: the second nearest is found by masking the nearest."""
        if dist.shape[1] < 2:
            return np.empty(0, int), np.empty(0, int)
        at = np.arange(len(dist))
        best_col = dist.argmin(axis=1)
        best = np.maximum(dist[at, best_col] + row_norm, 0.0)
        dist[at, best_col] = np.inf
        second = np.maximum(dist.min(axis=1) + row_norm, 0.0)
        rows = np.flatnonzero(best < (self.ratio ** 2) * second)  # ratio test on distances, squared
        if len(rows) == 0:
            return rows, rows
        order = np.lexsort((best[rows], best_col[rows]))  # by column, then distance
        rows = rows[order]
        keep = np.ones(len(rows), bool)
        keep[1:] = best_col[rows][1:] != best_col[rows][:-1]
        rows = rows[keep]
        return rows, best_col[rows]

    # one object in two shots (a tiger's face in two photos of it) matches as well as a copy, but
    # only there: a copy puts one picture, or most of it, inside the other, so on at least one
    # side the inliers span much of the keypoints. Inliers that span less than spread_min of the
    # keypoints' hull on both sides count as chance (copies measured: >= 0.26 with 8+ inliers; two
    # shots of one tiger: 0.045)
    spread_min = 0.1

    def _inliers(self, src: np.ndarray, dst: np.ndarray,
                 keypoints: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[int, np.ndarray | None, int]:
        """Distinct RANSAC inliers of a homography; an affine RANSAC first, because OpenCV's
        homography RANSAC takes ~3 ms on the random matches of unrelated pairs and 0.1 ms for an
        affine fit -- when not even :attr:`affine_gate` matches agree on an affine map, that small
        count is the answer (a homography fits at least as many; unrelated pairs stay <= 6).
        With both sides' ``keypoints`` (all of them), more than :attr:`chance` inliers that are
        local on both sides (see :attr:`spread_min`) count as :attr:`chance`.
        Also returns the affine map (src -> dst) and its distinct inliers, for :meth:`closer_look`."""
        count, mask, affine_map, affine = self._fit(src, dst)
        if (count > self.chance and keypoints is not None and mask is not None
                and self._spread(src, dst, mask, *keypoints) < self.spread_min):
            count = self.chance
        return count, affine_map, affine

    def _fit(self, src: np.ndarray, dst: np.ndarray) -> tuple[int, np.ndarray | None, np.ndarray | None, int]:
        """(distinct inliers, their mask, the affine map, its distinct inliers) of :meth:`_inliers`."""
        import cv2

        affine_map, mask = cv2.estimateAffine2D(src, dst, ransacReprojThreshold=self.ransac_px, refineIters=0)
        affine = self._distinct(src, dst, mask)
        if affine < self.affine_gate:
            return affine, mask, affine_map, affine
        _, h_mask = cv2.findHomography(src, dst, cv2.RANSAC, self.ransac_px)
        homography = self._distinct(src, dst, h_mask)
        return (homography, h_mask, affine_map, affine) if homography > affine else (affine, mask, affine_map, affine)

    @staticmethod
    def _spread(src: np.ndarray, dst: np.ndarray, mask: np.ndarray, src_all: np.ndarray, dst_all: np.ndarray) -> float:
        """The larger, over the two sides, of the inliers' convex hull area over all keypoints'."""
        import cv2

        def area(points: np.ndarray) -> float:
            return float(cv2.contourArea(cv2.convexHull(points.astype(np.float32)))) if len(points) >= 3 else 0.0

        keep = mask.ravel().astype(bool)
        shares = [area(inl[keep]) / whole for inl, every in ((src, src_all), (dst, dst_all))
                  if (whole := area(every)) > 0]
        return max(shares, default=1.0)

    @staticmethod
    def _distinct(src: np.ndarray, dst: np.ndarray, mask: np.ndarray | None) -> int:
        if mask is None:
            return 0
        keep = mask.ravel().astype(bool)

        def distinct(points: np.ndarray) -> int:  # on a 2-px grid: clusters of near-identical keypoints count once
            cell = np.round(points[keep] / 2).astype(np.int64)
            return len(np.unique(cell[:, 0] * 1_000_003 + cell[:, 1]))

        return min(distinct(src), distinct(dst))
