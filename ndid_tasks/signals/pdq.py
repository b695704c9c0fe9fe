"""PDQ: Meta's 256-bit hash with its dihedral distance, an optional stage-2 feature."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..images import LoadedImage
from .base import PairFeature, Signal


class PDQSignal(Signal):
    """Meta's PDQ (pdqhash): a 256-bit DCT hash, the one platforms exchange (ThreatExchange).

    :meth:`dihedral` gives the hashes of the 8 rotations/flips of an image, so the pair feature
    (:meth:`dihedral_distance`) is the smallest Hamming distance of any of them to the other
    image's hash: rotated and mirrored copies look as close as plain ones. Hashed from the
    content (flat borders trimmed) shrunk to :attr:`max_side` (PDQ reduces to 64x64 anyway):
    ~3 ms an image for all 8 hashes. A stage-2 signal, used when the calibration keeps it.
    """

    name, dim = "pdq", 256
    pair_features = (PairFeature("pdq_distance", 2, "pdq", 0.5, True,
                                 "smallest PDQ Hamming distance over the query's 8 rotations/flips / 256"),)
    max_side = 256

    def _pixels(self, im: LoadedImage) -> np.ndarray:
        small = im.content.convert("RGB")
        small.thumbnail((self.max_side, self.max_side))
        return np.ascontiguousarray(np.asarray(small))

    def compute(self, images: Sequence[LoadedImage]) -> np.ndarray:
        import pdqhash

        return np.array([pdqhash.compute(self._pixels(im))[0] for im in images], dtype=bool).reshape(-1, self.dim)

    def dihedral(self, images: Sequence[LoadedImage]) -> np.ndarray:
        """(n, 8, 256): the image's own hash first, then its 7 rotations/flips."""
        import pdqhash

        return np.array([pdqhash.compute_dihedral(self._pixels(im))[0] for im in images],
                        dtype=bool).reshape(-1, 8, self.dim)

    def compare(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.count_nonzero(np.asarray(a, bool) != np.asarray(b, bool)))

    @staticmethod
    def dihedral_distance(query8: np.ndarray, other: np.ndarray) -> int:
        """Smallest Hamming distance of any of the query's 8 dihedral hashes to ``other``'s hash
        (row 0 of its dihedral set, or its plain hash)."""
        other = np.asarray(other, bool)
        return int(np.count_nonzero(np.asarray(query8, bool) != (other[0] if other.ndim == 2 else other), axis=1).min())
