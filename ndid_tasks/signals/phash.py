"""pHash: imagehash's 64-bit DCT hash, the cheap candidate generator (a wide radius) and a stage-1
feature; its rotations/mirrors follow from its bits (turned copies)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import imagehash
import numpy as np
from PIL import Image

from ..images import LoadedImage, content_box
from .base import PairFeature, Signal


class PHashSignal(Signal):
    """imagehash's DCT pHash. Stored as 64 floats of 0/1 so that squared L2 distance = Hamming."""

    name, dim = "phash", 64
    pair_features = (PairFeature("phash_distance", 1, "phash", 0.5, False, "Hamming distance of the 64-bit pHashes / 64"),)

    def compute(self, images: Sequence[LoadedImage]) -> np.ndarray:
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        for i, im in enumerate(images):
            out[i] = imagehash.phash(im.content, hash_size=8).hash.flatten()
        return out

    def compare(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.count_nonzero(np.asarray(a) != np.asarray(b)))

    @staticmethod
    def to_hex(bits: np.ndarray) -> str:
        return str(imagehash.ImageHash(np.asarray(bits, dtype=bool).reshape(8, 8)))

    # The 7 right-angle rotations and mirrors of an image (PIL transpose op names), and what each
    # does to pHash's 8x8 low-frequency DCT block: (transpose it, negate the odd rows, negate the
    # odd columns). A bit says "coefficient above the block's median", and the median sits near 0,
    # so negating a coefficient flips its bit: the variants follow from the 64 bits alone, with no
    # pixels and nothing more stored. Measured on 200 ImageNet photos: the hash of the turned image
    # is 0-10 bits (mean ~3; transpose exact) from its derived variant; unrelated photos stay >= 14
    # bits from every variant (0.1 % quantile 16).
    DIHEDRAL: ClassVar[tuple[tuple[str, bool, bool, bool], ...]] = (
        ("FLIP_LEFT_RIGHT", False, False, True), ("FLIP_TOP_BOTTOM", False, True, False),
        ("ROTATE_180", False, True, True), ("TRANSPOSE", True, False, False),
        ("ROTATE_90", True, True, False), ("ROTATE_270", True, False, True), ("TRANSVERSE", True, True, True))
    _ODD = np.arange(8) % 2 == 1

    @classmethod
    def dihedral(cls, bits: np.ndarray) -> np.ndarray:
        """(7, 64) 0/1 hashes: what this image's pHash would be if it were turned by each of
        :data:`DIHEDRAL` (as the images' pHash, so an index search with them finds turned copies)."""
        block = np.asarray(bits).reshape(8, 8) > 0.5
        out = np.zeros((len(cls.DIHEDRAL), 64), dtype=np.float32)
        for n, (_, transpose, odd_rows, odd_cols) in enumerate(cls.DIHEDRAL):
            m = block.T.copy() if transpose else block.copy()
            if odd_rows:
                m[cls._ODD, :] = ~m[cls._ODD, :]
            if odd_cols:
                m[:, cls._ODD] = ~m[:, cls._ODD]
            m[0, 0] = block[0, 0]  # the DC term: above the median in any orientation
            out[n] = m.flatten()
        return out

    @classmethod
    def turned(cls, image: LoadedImage, variant: str) -> LoadedImage:
        """The picture as one of :data:`DIHEDRAL` turns it (its content: borders already
        trimmed), or the view of it one of :data:`VIEWS` names (see :meth:`_view`)."""
        import dataclasses

        if variant in cls.VIEWS:
            pic = cls._view(image.image, variant)
        else:
            pic = image.content.transpose(getattr(Image.Transpose, variant))
        return dataclasses.replace(image, image=pic, box=None)

    # A 2x2 collage's cell is its original squashed, and pHash squashes every picture to 32x32
    # anyway, so a quarter's hash is the original's: searched like the turned variants (the same
    # tight radius), it finds collages, which the whole image's signals miss (the other three cells
    # outweigh the original). Measured (docs/analysis/tile_phash_probe.py, photos outside the dev
    # set): 97 % of 60 collages within 8 bits of their original (median 0); no reference's own
    # quarter within 16 bits of another reference.
    QUARTERS: ClassVar[tuple[str, ...]] = ("QUARTER_TOP_LEFT", "QUARTER_TOP_RIGHT", "QUARTER_BOTTOM_LEFT",
                                           "QUARTER_BOTTOM_RIGHT")
    # A pair of pictures side by side or one above the other (a before/after, a two-photo post):
    # each half, as each quarter of a 2x2 collage, holds its original squashed or letterboxed.
    # Measured (docs/analysis/pair_halves_probe.py): see docs/benchmarks.md, session 25.
    HALVES: ClassVar[tuple[str, ...]] = ("HALF_LEFT", "HALF_RIGHT", "HALF_TOP", "HALF_BOTTOM")
    # The whole picture, its flat-looking borders kept: where a copy's trim still cuts what its
    # original's did not (content_box's edge rule stops most such trims), its trimmed hash can land
    # beyond the wide radius while the whole picture's is within the tight one. Measured
    # (docs/analysis/content_box_edge_probe.py): without the edge rule 9 of 12 such JPEG copies in
    # two benchmark sets, with it 1 of 2; no reference's untrimmed hash within 12 bits of another's.
    UNTRIMMED: ClassVar[str] = "UNTRIMMED"
    # the other views of a picture whose pHash is searched at the tight radius, as the turned
    # variants are (staged in this order: a batch staged with the quarters alone reads as a prefix)
    VIEWS: ClassVar[tuple[str, ...]] = (*QUARTERS, UNTRIMMED, *HALVES)

    # what a match in each variant says of the copy against its match (the variant turns it back)
    _HOW: ClassVar[dict[str, str]] = {
        "FLIP_LEFT_RIGHT": "mirrored", "FLIP_TOP_BOTTOM": "flipped upside down", "ROTATE_180": "rotated 180°",
        "ROTATE_90": "rotated 90° clockwise", "ROTATE_270": "rotated 90° anticlockwise",
        "TRANSPOSE": "rotated 90° and mirrored", "TRANSVERSE": "rotated 90° and mirrored",
        **{q: f"a collage with it in the {q.removeprefix('QUARTER_').lower().replace('_', '-')} cell" for q in QUARTERS},
        UNTRIMMED: "",  # (a plain copy: only the trim differed)
        "HALF_LEFT": "a pair of pictures with it on the left", "HALF_RIGHT": "a pair of pictures with it on the right",
        "HALF_TOP": "a pair of pictures with it on top", "HALF_BOTTOM": "a pair of pictures with it below"}

    @classmethod
    def how_matched(cls, variant: str) -> str:
        """A record's ``orientation`` for people, as what the image is against its match: "rotated
        90° clockwise", "a collage with it in the top-left cell"; "" for a plain match, the code
        itself for one this version does not know."""
        return cls._HOW.get(variant, variant) if variant else ""

    @classmethod
    def _view(cls, picture: Image.Image, variant: str, seams: dict[bool, int] | None = None) -> Image.Image:
        """The view of the whole (untrimmed) picture that ``variant``, one of :data:`VIEWS`, names
        (``seams``: the picture's :meth:`_seam` per direction, when already found)."""
        if variant == cls.UNTRIMMED:
            return picture
        if variant in cls.HALVES:
            across = variant in cls.HALVES[:2]  # (left/right: cut at a column)
            return cls._half(picture, variant, seams[across] if seams else cls._seam(picture, across))
        return cls._quarter(picture, cls.QUARTERS.index(variant))

    @classmethod
    def _half(cls, picture: Image.Image, variant: str, at: int) -> Image.Image:
        """A half of a two-picture post, cut at its seam ``at`` (:meth:`_seam`), then trimmed as
        a cell."""
        w, h = picture.size
        box = {"HALF_LEFT": (0, 0, at, h), "HALF_RIGHT": (at, 0, w, h),
               "HALF_TOP": (0, 0, w, at), "HALF_BOTTOM": (0, at, w, h)}[variant]
        if box[2] <= box[0] or box[3] <= box[1]:  # (a 1-px side: kept whole, never empty)
            box = (0, 0, w, h)
        return cls._trimmed_cell(picture.crop(box))

    @staticmethod
    def _seam(picture: Image.Image, across: bool) -> int:
        """Where two pictures meet (a column when ``across``, else a row) in the middle half of
        the picture: the line where the most of its length changes at once (the median step from
        the line before it), which an object's edge seldom matches. Two photos scaled to the same
        height meet where their shapes put them (0.33-0.69 of the width in the probe's posts), not
        in the middle; two equal cells meet in the middle anyway."""
        grey = np.asarray(picture.convert("L"), dtype=np.int16)
        lines = grey.T if across else grey
        if len(lines) < 8:
            return len(lines) // 2
        lo, hi = len(lines) // 4, 3 * len(lines) // 4
        steps = np.median(np.abs(np.diff(lines[lo - 1:hi], axis=0)), axis=1)
        return lo + int(np.argmax(steps))

    @staticmethod
    def _quarter_box(size: tuple[int, int], k: int) -> tuple[int, int, int, int]:
        """Quarter ``k`` of a picture of ``size``: never empty (a 1-px side is kept whole)."""
        (w, h), (col, row) = size, (k % 2, k // 2)

        def span(length: int, second: bool) -> tuple[int, int]:
            if length < 2:
                return 0, length
            mid = length // 2
            return (mid, length) if second else (0, mid)

        (x0, x1), (y0, y1) = span(w, bool(col)), span(h, bool(row))
        return x0, y0, x1, y1

    @classmethod
    def _quarter(cls, picture: Image.Image, k: int) -> Image.Image:
        """Quarter ``k`` of the whole picture, then without its own flat borders: a collage maker
        that keeps each photo's shape letterboxes it inside its cell, and trimming the whole
        collage first (its outer cells' bars) would shift the quarters off the cells; a canvas
        border around the collage lies on the quarters' outer sides and goes too
        (docs/benchmarks.md, session 24)."""
        return cls._trimmed_cell(picture.crop(cls._quarter_box(picture.size, k)))

    @staticmethod
    def _trimmed_cell(cell: Image.Image) -> Image.Image:
        """A cell of a collage or a pair without its own flat borders (see :meth:`_quarter`)."""
        for _ in range(2):  # (a canvas border, then a cell's bars of another colour)
            # (less the ~1 % of each side where resizing blends two colours: a seam, a border's edge)
            dx, dy = cell.width // 128, cell.height // 128
            cell = cell.crop((dx, dy, cell.width - dx, cell.height - dy))
            cell = cell.crop(content_box(cell, min_trim=0.02))
        return cell

    def views(self, images: Sequence[LoadedImage]) -> np.ndarray:
        """(n, len(VIEWS), 64): the pHash of each image's :data:`VIEWS`, in that order."""
        out = np.zeros((len(images), len(self.VIEWS), self.dim), dtype=np.float32)
        for i, im in enumerate(images):
            grey = im.image.convert("L")  # (what pHash and the trim look at anyway: converted once)
            seams = {across: self._seam(grey, across) for across in (True, False)}  # (once per picture)
            for k, variant in enumerate(self.VIEWS):
                out[i, k] = imagehash.phash(self._view(grey, variant, seams), hash_size=8).hash.flatten()
        return out
