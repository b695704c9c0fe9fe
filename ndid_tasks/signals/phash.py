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
    # A picture pasted inside another one (a screenshot of a post, a photo on a web page, a frame
    # in a video still) sits anywhere, at any size, so no fixed view holds it; but its frame is
    # four straight lines along which the image changes at once (:meth:`_inset_boxes`). What the
    # best frame holds is the original shrunk. Measured (docs/analysis/inset_frame_probe.py): see
    # docs/benchmarks.md, session 26. Where no frame is found the view is the untrimmed picture.
    INSET: ClassVar[str] = "INSET"
    # the other views of a picture whose pHash is searched at the tight radius, as the turned
    # variants are (staged in this order: a batch staged by an older version reads as a prefix)
    VIEWS: ClassVar[tuple[str, ...]] = (*QUARTERS, UNTRIMMED, *HALVES, INSET)

    # what a match in each variant says of the copy against its match (the variant turns it back)
    _HOW: ClassVar[dict[str, str]] = {
        "FLIP_LEFT_RIGHT": "mirrored", "FLIP_TOP_BOTTOM": "flipped upside down", "ROTATE_180": "rotated 180°",
        "ROTATE_90": "rotated 90° clockwise", "ROTATE_270": "rotated 90° anticlockwise",
        "TRANSPOSE": "rotated 90° and mirrored", "TRANSVERSE": "rotated 90° and mirrored",
        **{q: f"a collage with it in the {q.removeprefix('QUARTER_').lower().replace('_', '-')} cell" for q in QUARTERS},
        UNTRIMMED: "",  # (a plain copy: only the trim differed)
        "HALF_LEFT": "a pair of pictures with it on the left", "HALF_RIGHT": "a pair of pictures with it on the right",
        "HALF_TOP": "a pair of pictures with it on top", "HALF_BOTTOM": "a pair of pictures with it below",
        INSET: "a bigger picture with it inside"}

    @classmethod
    def how_matched(cls, variant: str) -> str:
        """A record's ``orientation`` for people, as what the image is against its match: "rotated
        90° clockwise", "a collage with it in the top-left cell"; "" for a plain match, the code
        itself for one this version does not know."""
        return cls._HOW.get(variant, variant) if variant else ""

    @classmethod
    def _view(cls, picture: Image.Image, variant: str, seams: dict[bool, int] | None = None,
              inset: list[tuple[int, int, int, int]] | None = None) -> Image.Image:
        """The view of the whole (untrimmed) picture that ``variant``, one of :data:`VIEWS`, names
        (``seams``: the picture's :meth:`_seam` per direction, ``inset``: its :meth:`_inset_boxes`,
        when already found; the inset is looked for in colour, so pass them for a grey picture)."""
        if variant == cls.UNTRIMMED:
            return picture
        if variant == cls.INSET:
            boxes = cls._inset_boxes(picture) if inset is None else inset
            return picture.crop(boxes[0]) if boxes else picture
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
    def _inset_boxes(picture: Image.Image, count: int = 1, side: int = 192, step: float = 24, min_share: float = 0.4,
                     lines: int = 12) -> list[tuple[int, int, int, int]]:
        """The frames of pictures pasted inside this one, best first (at most ``count``), each a
        (left, top, right, bottom) box of ``picture``; [] where there is none. Looked for at
        ``side`` px. A frame's side is a straight line along which the picture steps by at least
        ``step`` levels in some colour channel (over two pixels: resizing blends an edge into
        one), more than on the lines beside it, for at least ``min_share`` of its length: an
        object's edge bends, fades or stops, and a texture's steps do not line up. The ``lines``
        columns and rows with the most such steps are paired into rectangles of 20-90 % of each
        side; those whose every side has ``min_share`` are ranked by their sides' mean share.
        Measured (docs/analysis/inset_frame_probe.py, photos outside the dev set): a frame is
        found in 94 % of pictures-in-pictures and in 23 % of photos with none."""
        w, h = picture.size
        scale = side / max(w, h)
        small = np.asarray(picture.resize((max(8, round(w * scale)), max(8, round(h * scale))),
                                          Image.Resampling.BILINEAR), dtype=np.int16)
        if small.ndim == 2:
            small = small[:, :, None]

        def line_steps(pixels: np.ndarray) -> np.ndarray:
            """(rows + 1, columns - 2), cumulated down the rows: where the step from column b to
            b+2 stands out across the line."""
            channels = np.abs(pixels[:, 2:] - pixels[:, :-2])
            steps = channels[..., 0]
            for c in range(1, channels.shape[-1]):  # (the largest channel's: ~15x faster than .max(axis=-1))
                steps = np.maximum(steps, channels[..., c])
            padded = np.pad(steps, ((0, 0), (1, 1)))
            hit = (steps >= step) & (steps >= padded[:, :-2]) & (steps >= padded[:, 2:])
            return np.vstack([np.zeros((1, hit.shape[1])), np.cumsum(hit, axis=0)])

        def strongest(cum: np.ndarray) -> np.ndarray:
            counts, chosen = cum[-1], list[int]()
            for b in np.argsort(-counts, kind="stable"):
                if len(chosen) == lines or counts[b] < 0.2 * min_share * (len(cum) - 1):
                    break
                if all(abs(int(b) - c) > 2 for c in chosen):
                    chosen.append(int(b))
            return np.array(sorted(chosen), dtype=int)

        cols, rows = line_steps(small), line_steps(small.transpose(1, 0, 2))  # (H+1, W-2), (W+1, H-2)
        height, width = small.shape[:2]
        xs, ys = strongest(cols), strongest(rows)
        if len(xs) < 2 or len(ys) < 2:
            return []
        # every rectangle (x0, x1, y0, y1) of the chosen lines at once: each side's share of steps
        x0, x1, y0, y1 = np.meshgrid(xs, xs, ys, ys, indexing="ij")
        wide, tall = (x1 - x0).astype(np.float32), (y1 - y0).astype(np.float32)
        fits = (wide >= 0.2 * width) & (wide <= 0.9 * width) & (tall >= 0.2 * height) & (tall <= 0.9 * height)
        if not fits.any():
            return []
        with np.errstate(divide="ignore", invalid="ignore"):
            sides = np.stack([(cols[y1 + 1, x0] - cols[y0 + 1, x0]) / tall,
                              (cols[y1 + 1, x1] - cols[y0 + 1, x1]) / tall,
                              (rows[x1 + 1, y0] - rows[x0 + 1, y0]) / wide,
                              (rows[x1 + 1, y1] - rows[x0 + 1, y1]) / wide])
        score = np.where(fits & (sides.min(axis=0) >= min_share), sides.mean(axis=0), -1.0).ravel()
        found: list[tuple[int, int, int, int]] = []
        for k in np.argsort(-score, kind="stable"):
            if score[k] < 0 or len(found) == count:
                break
            # the pixels inside the four lines (line b steps from pixel b to b+2): b+2 .. b
            left, right, top, bottom = (int(v.ravel()[k]) for v in (x0, x1, y0, y1))
            box = (int(np.ceil((left + 2) / scale)), int(np.ceil((top + 2) / scale)), int((right + 1) / scale),
                   int((bottom + 1) / scale))
            if all(_overlap(box, other) < 0.7 for other in found):
                found.append(box)
        return found

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
            inset = self._inset_boxes(im.image)  # (in colour: a frame can change hue, not brightness)
            for k, variant in enumerate(self.VIEWS):
                out[i, k] = imagehash.phash(self._view(grey, variant, seams, inset), hash_size=8).hash.flatten()
        return out


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two (left, top, right, bottom) boxes."""
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
