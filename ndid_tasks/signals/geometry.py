"""Geometric verification: SIFT features (stored at ingest), ratio test, RANSAC inliers; stage 2."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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


_SIFT_MIRROR = _sift_mirror_permutation()


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
        out.descriptors = self.descriptors[:, _SIFT_MIRROR]
        return out


class GeometricSignal(Signal):
    """Geometric verification: SIFT, ratio test, one-to-one matches, RANSAC homography inliers.

    :meth:`verify_many` returns, per candidate, the number of *distinct* inlier points: repeated
    matches onto blank backgrounds cannot inflate it, and no scale limit is imposed, so thumbnails
    verify. Mirrored copies: the query's mirrored features (a descriptor permutation) are matched
    too, and RANSAC runs on them only where the direct match is weak. All candidates of a query
    are matched in one matrix product: ~1.5 ms a pair with its mirror (OpenCV's brute-force
    matcher plus a homography RANSAC took 6.5 ms, and the mirror a second SIFT pass of 30 ms).
    Extraction (~18 ms an image at 384 px) is the rest, hence only for ambiguous pairs, and each
    image's features are kept.
    """

    name, dim = "geometry", 0
    pair_features = (PairFeature("log_inliers", 2, "geometry", 0.0, False,
                                 "log(1 + distinct RANSAC inliers of the SIFT matches)"),)
    ratio = 0.8
    ransac_px = 5.0
    verified = 12  # distinct inliers above which a pair is geometrically verified (unrelated: <= 6)
    affine_gate = 6  # fewer affine inliers than this: no homography RANSAC (see _inliers)

    def __init__(self, max_features: int = 500, max_side: int = 384) -> None:
        self.max_features = max_features
        self.max_side = max_side

    higher_is_closer = True  # distinct inliers

    @classmethod
    def from_settings(cls, settings: Settings) -> GeometricSignal:
        return cls(settings.sift_features, settings.sift_max_side)

    @classmethod
    def for_settings(cls, settings: Settings) -> GeometricSignal:
        return cls.from_settings(settings)

    def compute(self, images: Sequence[LoadedImage]) -> list[LocalFeatures]:
        import cv2

        sift = cv2.SIFT_create(nfeatures=self.max_features)  # type: ignore[attr-defined]  # (no stub)
        out = []
        for im in images:
            small = im.image.convert("L")
            small.thumbnail((self.max_side, self.max_side))
            kp, desc = sift.detectAndCompute(np.asarray(small), None)
            out.append(LocalFeatures(np.array([k.pt for k in kp], dtype=np.float32).reshape(-1, 2), desc))
        return out

    def compare(self, a: LocalFeatures, b: LocalFeatures) -> float:
        """Distinct inliers of ``a`` on ``b`` (no mirroring)."""
        return float(self.verify_many(a, [b], mirror=False)[0])

    def verify(self, query: LocalFeatures, candidate: LocalFeatures) -> float:
        """Distinct inliers of the query (or, when that is weak, of its mirror) on the candidate."""
        return float(self.verify_many(query, [candidate])[0])

    def verify_many(self, query: LocalFeatures, candidates: Sequence[LocalFeatures],
                    mirror: bool = True) -> list[int]:
        """Distinct inliers of the query on each candidate: max(direct, mirrored), where the
        mirror is tried only when the direct match has fewer than :attr:`verified` inliers."""
        out = [0] * len(candidates)
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
                if s and out[k] >= self.verified:
                    break
                src, dst = self._tentative(dist[s * n:(s + 1) * n, start:stop], row_norm[s * n:(s + 1) * n])
                if len(src) >= 4:
                    out[k] = max(out[k], self._inliers(side.points[src], candidates[k].points[dst]))
            start = stop
        return out

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

    def _inliers(self, src: np.ndarray, dst: np.ndarray) -> int:
        """Distinct RANSAC inliers of a homography; an affine RANSAC first, because OpenCV's
        homography RANSAC takes ~3 ms on the random matches of unrelated pairs and 0.1 ms for an
        affine fit -- when not even :attr:`affine_gate` matches agree on an affine map, that small
        count is the answer (a homography fits at least as many; unrelated pairs stay <= 6)."""
        import cv2

        _, mask = cv2.estimateAffine2D(src, dst, ransacReprojThreshold=self.ransac_px, refineIters=0)
        affine = self._distinct(src, dst, mask)
        if affine < self.affine_gate:
            return affine
        _, mask = cv2.findHomography(src, dst, cv2.RANSAC, self.ransac_px)
        return max(affine, self._distinct(src, dst, mask))

    @staticmethod
    def _distinct(src: np.ndarray, dst: np.ndarray, mask: np.ndarray | None) -> int:
        if mask is None:
            return 0
        keep = mask.ravel().astype(bool)

        def distinct(points: np.ndarray) -> int:  # on a 2-px grid: clusters of near-identical keypoints count once
            cell = np.round(points[keep] / 2).astype(np.int64)
            return len(np.unique(cell[:, 0] * 1_000_003 + cell[:, 1]))

        return min(distinct(src), distinct(dst))
