"""Which trims of flat borders are real borders, and what a wrong trim costs (issue #15, session 25).

``images.content_box`` trims lines from each edge while 40 % of a line is within 2 grey levels of
the edge's colour. A meme canvas or a letterbox bar passes, but so does a photo's own sky, and a
JPEG at its lowest qualities turns a sky or a field into flat 8x8 blocks. A copy then trims what
its original did not, and its pHash (of the trimmed content) lands beyond the candidate radius.

Per group of images, with the edge rule off (``edge_share=0``, the rule before this session):
the share of the outermost line within the tolerance, on each side that was trimmed. Then, with
the rule off and on (0.9): per family of copies, how many are trimmed, how many have their pHash
beyond the wide radius (24 bits) of their original's, and of those how many have the untrimmed
picture's pHash (``PHashSignal.UNTRIMMED``) within the tight one (12); and how many references'
untrimmed hash is within 12 bits of another reference's (false candidates of that view).

Benchmark folders made by ``ndid bench make`` (docs/benchmarks.md: /tmp/bench_r2 is the dev set,
/tmp/hold the outside set); meme canvases are added to the first 60 refs here, saved at JPEG
quality 85 and 1-7.

    .venv/bin/python docs/analysis/content_box_edge_probe.py /tmp/bench_r2 /tmp/hold
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from ndid_tasks.augment import attack_meme_border
from ndid_tasks.images import content_box, load_image


def edge_shares(img: Image.Image, box: tuple[int, int, int, int], tolerance: int = 2) -> list[float]:
    grey = np.asarray(img.convert("L"), dtype=np.int16)
    w, h = img.size
    sides = ((box[1] > 0, grey[0]), (box[3] < h, grey[-1]), (box[0] > 0, grey[:, 0]), (box[2] < w, grey[:, -1]))
    return [float(np.mean(np.abs(line - np.median(line)) <= tolerance)) for trimmed, line in sides if trimmed]


def hashes(img: Image.Image, edge_share: float) -> tuple[np.ndarray, np.ndarray, bool]:
    box = content_box(img, edge_share=edge_share)
    trimmed = box != (0, 0, *img.size)
    return (imagehash.phash(img.crop(box)).hash.flatten(), imagehash.phash(img).hash.flatten(), trimmed)


def probe(folder: Path) -> None:
    def pic(path: Path) -> Image.Image:
        return load_image(path.read_bytes(), path.name).image

    refs = {p.name: pic(p) for p in sorted((folder / "refs").iterdir())}
    with open(folder / "ground_truth.csv") as f:
        copies = [(r[0], r[1], r[2]) for r in list(csv.reader(f))[1:] if r[1]]
    shares: dict[str, list[float]] = {"refs": []}
    for img in refs.values():
        shares["refs"] += edge_shares(img, content_box(img, edge_share=0))
    for name, _, family in copies:
        img = pic(folder / "queries" / name)
        shares.setdefault(family, []).extend(edge_shares(img, content_box(img, edge_share=0)))
    rng = np.random.default_rng(0)
    for img in list(refs.values())[:60]:
        meme = attack_meme_border(img, rng)
        for label, quality in (("meme canvas, JPEG 85", 85), ("meme canvas, JPEG 1-7", int(rng.integers(1, 8)))):
            buf = io.BytesIO()
            meme.save(buf, "JPEG", quality=quality)
            loaded = load_image(buf.getvalue(), "meme").image
            shares.setdefault(label, []).extend(edge_shares(loaded, content_box(loaded, edge_share=0)))
    print(f"\n{folder}: the outermost line's flat share on each trimmed side (edge rule off)")
    print("| images | sides trimmed | 5 % / 25 % / median | share of sides >= 0.9 |\n|---|---|---|---|")
    for group, values in shares.items():
        v = np.array(values)
        if len(v):
            q = np.quantile(v, [0.05, 0.25, 0.5])
            print(f"| {group} | {len(v)} | {q[0]:.2f} / {q[1]:.2f} / {q[2]:.2f} | {np.mean(v >= 0.9):.2f} |")

    print(f"\n{folder}: copies trimmed / pHash beyond 24 bits / of those, untrimmed pHash within 12")
    print("| family | copies | edge rule off | edge rule on (0.9) |\n|---|---|---|---|")
    rows: dict[str, list[str]] = {}
    for edge_share in (0.0, 0.9):
        own = {name: hashes(img, edge_share) for name, img in refs.items()}
        counts: dict[str, list[int]] = {}
        for name, original, family in copies:
            trimmed_hash, whole_hash, trimmed = hashes(pic(folder / "queries" / name), edge_share)
            far = int(np.sum(trimmed_hash != own[original][0])) > 24
            near_whole = int(np.sum(whole_hash != own[original][0])) <= 12
            c = counts.setdefault(family, [0, 0, 0, 0])
            c[0], c[1], c[2], c[3] = c[0] + 1, c[1] + trimmed, c[2] + far, c[3] + (far and near_whole)
        for family, (n, trimmed, far, rescued) in counts.items():
            rows.setdefault(family, [str(n)]).append(f"{trimmed} / {far} / {rescued}")
        names = list(own)
        stored = np.array([own[n][0] for n in names])
        clash = sum(int(((stored != own[n][1]).sum(1)[np.arange(len(names)) != i] <= 12).any())
                    for i, n in enumerate(names) if own[n][2])
        rows.setdefault("refs (trimmed; untrimmed hash within 12 of another ref)", ["-"]).append(
            f"{sum(v[2] for v in own.values())} of {len(names)}; {clash}")
    for family, cells in rows.items():
        print(f"| {family} | {' | '.join(cells)} |")


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        probe(Path(arg))
