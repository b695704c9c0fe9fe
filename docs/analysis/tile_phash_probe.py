"""Would the pHash of a query's quadrants find collages (issue #15, session 23, a proposal)?

For each composite copy of an attack_stress.py folder: the smallest Hamming distance between the
pHash of one of the query's four quadrants and its original's pHash, and the smallest to any other
reference. For images with no copy: each reference's quadrants against the other references (the
false candidates such a search would add).

    python docs/analysis/tile_phash_probe.py STRESS_FOLDER
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ndid_tasks.benchmark import read_ground_truth
from ndid_tasks.images import load_image
from ndid_tasks.signals.phash import PHashSignal


def quadrant_hashes(phash: PHashSignal, img: Image.Image) -> np.ndarray:
    w, h = img.size
    tiles = [img.crop((i * w // 2, j * h // 2, (i + 1) * w // 2, (j + 1) * h // 2)) for i in (0, 1) for j in (0, 1)]

    def loaded(tile: Image.Image):
        buf = io.BytesIO()
        tile.save(buf, "PNG")
        return load_image(buf.getvalue(), "tile")

    return np.array(phash.compute([loaded(t) for t in tiles]))


def main() -> None:
    folder = Path(sys.argv[1])
    phash = PHashSignal()
    refs = sorted((folder / "refs").iterdir())
    names = [p.name for p in refs]
    hashes = np.array(phash.compute([load_image(p.read_bytes(), p.name) for p in refs]))
    rows = read_ground_truth(folder)
    print("| queries | to the original: median / share <= 8 bits | to any other reference: min / median |")
    print("|---|---|---|")
    for family in ("collage", "picture_in_picture"):
        to_original, to_other = [], []
        for r in (r for r in rows if r["family"] == family):
            dist = (quadrant_hashes(phash, Image.open(folder / "queries" / r["query"]).convert("RGB"))[:, None, :]
                    != hashes[None, :, :]).sum(-1)
            k = names.index(r["original"])
            to_original.append(dist[:, k].min())
            to_other.append(np.delete(dist, k, axis=1).min())
        a, b = np.array(to_original), np.array(to_other)
        print(f"| {family} ({len(a)}) | {np.median(a):.0f} / {np.mean(a <= 8):.2f} | {b.min()} / {np.median(b):.0f} |")
    nearest = []
    for k, path in enumerate(refs):
        dist = (quadrant_hashes(phash, Image.open(path).convert("RGB"))[:, None, :] != hashes[None, :, :]).sum(-1)
        nearest.append(np.delete(dist, k, axis=1).min())
    n = np.array(nearest)
    print(f"| the {len(n)} references' own quadrants (no copy) | | {n.min()} / {np.median(n):.0f} |")


if __name__ == "__main__":
    main()
