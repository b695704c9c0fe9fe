"""Whether a photo in a 3x3 grid reaches its original through the pHash of its cell (issue #15,
session 26).

A nine-photo post (a photo dump) puts each photo in a third of the frame's width and height: the
whole image's signals see the other eight, and the quarters and halves cut across cells. Per
layout (squashed into the cell, fitted in it on white, cropped to fill it; on a meme canvas or
not): the fewest bits between the pHash of one of the query's nine cells and the original's, and
the share within the tight radius (12 bits), for cells cut from the whole picture or from it
trimmed first (``content_box``), each then trimmed like a quarter. Then the false candidates the
cells could add: each reference's own cells against every other reference's pHash, and the time
the nine cells take. Not shipped (docs/benchmarks.md, session 26).

Photos outside the dev set: originals 240..299 (the outside set's), the other cells and
references from distractors 430..559.

    .venv/bin/python docs/analysis/grid_cells_probe.py ../shared/data
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageOps

from ndid_tasks.images import content_box
from ndid_tasks.signals.phash import PHashSignal

sys.path.insert(0, str(Path(__file__).parent))
from collage_layouts_probe import loaded, nearest_other

LAYOUTS = ("squash", "fit", "fill", "squash_framed", "fit_framed")


def grid(tiles: list[Image.Image], cells: np.ndarray, layout: str) -> Image.Image:
    cw, ch = 240, 180
    canvas = Image.new("RGB", (3 * cw, 3 * ch), (255, 255, 255))
    for cell, tile in zip(cells, tiles, strict=True):
        if layout.startswith("squash"):
            box = tile.resize((cw, ch))
        elif layout == "fill":
            box = ImageOps.fit(tile, (cw, ch))
        else:
            box, inner = Image.new("RGB", (cw, ch), (255, 255, 255)), ImageOps.contain(tile, (cw, ch))
            box.paste(inner, ((cw - inner.width) // 2, (ch - inner.height) // 2))
        canvas.paste(box, (int(cell % 3) * cw, int(cell // 3) * ch))
    if layout.endswith("framed"):
        framed = Image.new("RGB", (3 * cw + 80, 3 * ch + 80), (250, 250, 250))
        framed.paste(canvas, (40, 40))
        canvas = framed
    return canvas


def cells(picture: Image.Image, trim_first: bool) -> list[np.ndarray]:
    """The pHash of each cell of a 3x3 grid over the (grey) picture."""
    grey = picture.convert("L")
    if trim_first:
        grey = grey.crop(content_box(grey))
    w, h = grey.size
    out = []
    for k in range(9):
        col, row = k % 3, k // 3
        box = ((w * col) // 3, (h * row) // 3, max((w * col) // 3 + 1, (w * (col + 1)) // 3),
               max((h * row) // 3 + 1, (h * (row + 1)) // 3))
        out.append(imagehash.phash(PHashSignal._trimmed_cell(grey.crop(box)), hash_size=8).hash.flatten())
    return out


def main(data: str) -> None:
    sig, rng = PHashSignal(), np.random.default_rng(7)
    originals = [Image.open(p).convert("RGB") for p in sorted(Path(data, "originals").glob("*.jpg"))[240:300]]
    pool = [Image.open(p).convert("RGB") for p in sorted(Path(data, "distractors").glob("*"))[430:560]]
    distances: dict[tuple[str, bool], list[int]] = {(lay, t): [] for lay in LAYOUTS for t in (False, True)}
    for img in originals:
        own = sig.compute([loaded(img)])[0]
        for layout in LAYOUTS:
            tiles = [img] + [pool[int(k)] for k in rng.choice(len(pool), 8, replace=False)]
            post = loaded(grid(tiles, rng.permutation(9), layout)).image
            for trim_first in (False, True):
                distances[layout, trim_first].append(int(min(np.count_nonzero(v != own)
                                                              for v in cells(post, trim_first))))
    print("| layout | cut from the whole picture: median bits / within 12 | trimmed first: median / within 12 |")
    print("|---|---|---|")
    for layout in LAYOUTS:
        row = [distances[layout, t] for t in (False, True)]
        print(f"| {layout} | " + " | ".join(f"{np.median(f):.0f} / {np.mean(np.array(f) <= 12):.3f}" for f in row) + " |")
    refs = originals + pool
    pics = [loaded(r) for r in refs]
    whole = np.array(sig.compute(pics))
    for trim_first in (False, True):
        t0 = time.perf_counter()
        own_cells = np.array([cells(p.image, trim_first) for p in pics])
        spent = 1000 * (time.perf_counter() - t0) / len(pics)
        nearest = nearest_other(own_cells, whole)
        print(f"{len(refs)} references ({'trimmed first' if trim_first else 'whole'}), own cells to another "
              f"reference: min {nearest.min()} bits, within 12: {np.mean(nearest <= 12):.3f}; {spent:.1f} ms an image")


if __name__ == "__main__":
    main(sys.argv[1])
