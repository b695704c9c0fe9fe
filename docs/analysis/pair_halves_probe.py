"""Do two-picture posts reach their original through the pHash of the picture's halves, and what
false candidates would the halves add? (issue #15, session 25)

A pair of pictures side by side or stacked (``augment.attack_pair``: each squashed into an equal
cell, fitted in it on white or black, or both scaled to the same height keeping their shapes) is
neither a 2x2 collage nor a crop: the whole image's pHash and descriptor see two photos, and its
quarters cut the original in two. Per layout: the share of pairs whose original is within the
tight (turned) radius, 12 bits, of one of the query's quarters, of its halves
(``PHashSignal.HALVES``), of either. Then each reference's own halves against every other
reference's pHash (what searching them would propose for images with no copy), and the same for
the quarters for comparison.

Photos outside the dev set: originals 240..299 (the outside set's), other pictures and references
from distractors 430..559.

    .venv/bin/python docs/analysis/pair_halves_probe.py ../shared/data
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from collage_layouts_probe import loaded, nearest_other  # (a sibling in docs/analysis)
from PIL import Image

from ndid_tasks.augment import PAIR_LAYOUTS, attack_pair
from ndid_tasks.signals.phash import PHashSignal

QUARTERS = [PHashSignal.VIEWS.index(v) for v in PHashSignal.QUARTERS]
HALVES = [PHashSignal.VIEWS.index(v) for v in PHashSignal.HALVES]


def main(data: str) -> None:
    sig, rng = PHashSignal(), np.random.default_rng(5)
    originals = [Image.open(p).convert("RGB") for p in sorted(Path(data, "originals").glob("*.jpg"))[240:300]]
    pool = [Image.open(p).convert("RGB") for p in sorted(Path(data, "distractors").glob("*"))[430:560]]
    found: dict[str, list[tuple[int, int]]] = {layout: [] for layout in PAIR_LAYOUTS}
    for img in originals:
        own = sig.compute([loaded(img)])[0]
        for layout in PAIR_LAYOUTS:
            views = sig.views([loaded(attack_pair(img, pool, rng, layout))])[0]
            bits = (views != own).sum(-1)
            found[layout].append((int(bits[QUARTERS].min()), int(bits[HALVES].min())))
    print("| layout | pairs | within 12 bits: a quarter | a half | either | median bits of the nearest half |")
    print("|---|---|---|---|---|---|")
    for layout, rows in found.items():
        q, h = np.array(rows).T
        print(f"| {layout} | {len(rows)} | {np.mean(q <= 12):.3f} | {np.mean(h <= 12):.3f} | "
              f"{np.mean(np.minimum(q, h) <= 12):.3f} | {np.median(h):.0f} |")
    refs = originals + pool
    whole = np.array(sig.compute([loaded(r) for r in refs]))
    views = sig.views([loaded(r) for r in refs])
    print(f"\n{len(refs)} references, their own views against every other reference's pHash:")
    for name, cols in (("quarters", QUARTERS), ("halves", HALVES)):
        nearest = nearest_other(views[:, cols], whole)
        print(f"- {name}: min {nearest.min()} bits; references with one within 12: {np.sum(nearest <= 12)} "
              f"({np.mean(nearest <= 12):.3f}), within 16: {np.sum(nearest <= 16)}")


if __name__ == "__main__":
    main(sys.argv[1])
