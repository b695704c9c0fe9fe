"""How collage layouts other than the benchmark's squashed cells reach their original through the
quarter search (issue #15, session 24).

The benchmark's collage (``augment.attack_collage``) squashes each photo into its cell, and pHash
squashes every picture anyway. Collage makers differ: some keep each photo's shape (``fit``: the
photo centred on white in its cell), some crop it to fill the cell (``fill``); either may sit on a
canvas border (``framed``). Per layout: the smallest Hamming distance between a collage quarter's
pHash (the first four of ``PHashSignal.views``) and its original's, and the share within the turned search's
radius (12 bits). Then the false candidates the quarters could add: each reference's own quarters
against every other reference's pHash.

Photos outside the dev set: originals 240..299 (the outside set's), other cells and references
from distractors 430..559.

    .venv/bin/python docs/analysis/collage_layouts_probe.py ../shared/data
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ndid_tasks.images import LoadedImage, load_image
from ndid_tasks.signals.phash import PHashSignal

LAYOUTS = ("squash", "fill", "fit", "squash_framed", "fit_framed")


def loaded(img: Image.Image) -> LoadedImage:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return load_image(buf.getvalue(), "x")


def nearest_other(views: np.ndarray, whole: np.ndarray) -> np.ndarray:
    """Per reference, the fewest bits between one of its own ``views`` (n, k, 64) and another
    reference's pHash (``whole``, n x 64): what searching those views would propose for it."""
    dist = (views[:, :, None, :] != whole[None, None, :, :]).sum(-1)
    for i in range(len(whole)):
        dist[i, :, i] = 64
    return dist.min(axis=(1, 2))


def collage(tiles: list[Image.Image], cells: np.ndarray, layout: str) -> Image.Image:
    canvas = Image.new("RGB", (640, 480), (255, 255, 255))
    for cell, tile in zip(cells, tiles, strict=True):
        if layout.startswith("squash"):
            box = tile.resize((320, 240))
        elif layout == "fill":
            box = ImageOps.fit(tile, (320, 240))
        else:
            box, inner = Image.new("RGB", (320, 240), (255, 255, 255)), ImageOps.contain(tile, (320, 240))
            box.paste(inner, ((320 - inner.width) // 2, (240 - inner.height) // 2))
        canvas.paste(box, (int(cell % 2) * 320, int(cell // 2) * 240))
    if layout.endswith("framed"):  # on a meme canvas: a 40-px border all round
        framed = Image.new("RGB", (720, 560), (250, 250, 250))
        framed.paste(canvas, (40, 40))
        canvas = framed
    return canvas


def main(data: str) -> None:
    sig, rng = PHashSignal(), np.random.default_rng(3)
    originals = [Image.open(p).convert("RGB") for p in sorted(Path(data, "originals").glob("*.jpg"))[240:300]]
    pool = [Image.open(p).convert("RGB") for p in sorted(Path(data, "distractors").glob("*"))[430:560]]
    distances: dict[str, list[int]] = {layout: [] for layout in LAYOUTS}
    for img in originals:
        own = sig.compute([loaded(img)])[0]
        for layout in LAYOUTS:
            tiles = [img] + [pool[int(k)] for k in rng.choice(len(pool), 3, replace=False)]
            quarters = sig.views([loaded(collage(tiles, rng.permutation(4), layout))])[0, :4]
            distances[layout].append(int(min(np.count_nonzero(q != own) for q in quarters)))
    print("| layout | median bits to the original | within 12 bits |")
    print("|---|---|---|")
    for layout, found in distances.items():
        print(f"| {layout} | {np.median(found):.0f} | {np.mean(np.array(found) <= 12):.3f} |")
    refs = originals + pool
    whole = np.array(sig.compute([loaded(r) for r in refs]))
    nearest = nearest_other(sig.views([loaded(r) for r in refs])[:, :4], whole)
    print(f"\n{len(refs)} references, own quarters to another reference: min {nearest.min()} bits, "
          f"within 12: {np.mean(nearest <= 12):.3f}, within 16: {np.mean(nearest <= 16):.3f}")


if __name__ == "__main__":
    main(sys.argv[1])
