"""Attacks the benchmark generator does not make, at harsher settings (issue #15, session 23).

Makes a benchmark folder that reuses another one's refs and negatives and attacks each of its
originals 13 more ways: a free rotation with the corners kept, an aspect change, heavy noise, a
72-px thumbnail, a vertical flip, a right-angle turn and a crop (also mirrored), a strong
perspective, a hard tone curve, blobs over a fifth of the frame, a strong blur, and the two
composite copies of ``augment.OPTIONAL_FAMILIES`` (picture in picture, collage). Then run
``ndid bench run OUT --methods full`` on it: the report gives each attack as a family.

    python docs/analysis/attack_stress.py BENCH_FOLDER NEVER_INDEXED_PHOTOS OUT [--seed N]

BENCH_FOLDER: a folder made by ``ndid bench make`` (its refs are linked, not copied).
NEVER_INDEXED_PHOTOS: photos none of the refs come from (the composite copies' other parts).
Meant for photos outside the dev benchmark (session 23 used the outside set, /tmp/hold).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from ndid_tasks import augment
from ndid_tasks.benchmark import read_ground_truth
from ndid_tasks.images import image_files

TURNS = (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)


def attacks(rng: np.random.Generator, pool: list[Image.Image]) -> dict:
    def rot_free(img):
        angle = rng.uniform(25, 45) * rng.choice([-1, 1])
        return augment.jpeg(img.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True), 80)

    def stretch(img):
        w, h = img.size
        f = rng.uniform(0.55, 0.7)
        return augment.jpeg(img.resize((int(w * f), h) if rng.random() < 0.5 else (w, int(h * f))), 80)

    def noise(img):
        arr = np.asarray(img, np.float32) + rng.normal(0, 22, (img.height, img.width, 3))
        return augment.jpeg(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), 50)

    def tiny(img):
        scale = 72 / max(img.size)
        return augment.jpeg(img.resize((max(8, int(img.width * scale)), max(8, int(img.height * scale))),
                                       Image.Resampling.LANCZOS), 70)

    def flip_v(img):
        return augment.jpeg(ImageOps.flip(img), 80)

    def rot90_crop(img):
        turned = img.transpose(TURNS[int(rng.integers(3))])
        return augment.jpeg(augment.crop_area(turned, rng, rng.uniform(0.3, 0.5)), 75)

    def mirror_rot90_crop(img):
        return rot90_crop(ImageOps.mirror(img))

    def perspective(img):
        w, h, d = img.width, img.height, 0.2
        quad = [(rng.uniform(0, d) * w, rng.uniform(0, d) * h), (rng.uniform(0, d) * w, h - rng.uniform(0, d) * h),
                (w - rng.uniform(0, d) * w, h - rng.uniform(0, d) * h), (w - rng.uniform(0, d) * w, rng.uniform(0, d) * h)]
        out = img.transform((w, h), Image.Transform.QUAD, [c for p in quad for c in p], Image.Resampling.BILINEAR)
        return augment.jpeg(out, 75)

    def tone(img):
        out = ImageEnhance.Contrast(img).enhance(rng.uniform(1.6, 2.0))
        out = ImageEnhance.Color(out).enhance(rng.uniform(0.0, 2.0))
        arr = (np.asarray(out, np.float32) / 255.0) ** rng.uniform(0.45, 0.6)
        return augment.jpeg(Image.fromarray((arr * 255).astype(np.uint8)), 80)

    def stickers(img):
        out = img.copy()
        draw = ImageDraw.Draw(out)
        for _ in range(4):
            r = int(min(out.size) * rng.uniform(0.12, 0.2))
            x, y = int(rng.integers(0, out.width)), int(rng.integers(0, out.height))
            draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        return augment.jpeg(out, 80)

    def blur(img):
        return augment.jpeg(img.filter(ImageFilter.GaussianBlur(rng.uniform(2.5, 3.5))), 80)

    def picture_in_picture(img):
        return augment.attack_picture_in_picture(img, pool, rng)

    def collage(img):
        return augment.attack_collage(img, pool, rng)

    return {f.__name__: f for f in (rot_free, stretch, noise, tiny, flip_v, rot90_crop, mirror_rot90_crop,
                                    perspective, tone, stickers, blur, picture_in_picture, collage)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bench")
    ap.add_argument("never_indexed")
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=2023)
    args = ap.parse_args()
    src, out = Path(args.bench), Path(args.out)
    (out / "queries").mkdir(parents=True, exist_ok=True)
    if not (out / "refs").exists():
        (out / "refs").symlink_to(src.resolve() / "refs")
    truth = read_ground_truth(src)
    refs = {p.name for p in (src / "refs").iterdir()}
    pool = [Image.open(p).convert("RGB") for p in image_files(args.never_indexed) if p.name not in refs][-80:]
    made = attacks(np.random.default_rng(args.seed), pool)
    rows = []
    for original in sorted({r["original"] for r in truth if r["original"]}):
        img = Image.open(src / "refs" / original).convert("RGB")
        for name, attack in made.items():
            query = f"{Path(original).stem}__{name}.jpg"
            attack(img).convert("RGB").save(out / "queries" / query, quality=95)
            rows.append({"query": query, "original": original, "family": name, "attack": name})
    for r in truth:  # the same negatives (plain and same-scene) as the folder it builds on
        if not r["original"]:
            (out / "queries" / r["query"]).write_bytes((src / "queries" / r["query"]).read_bytes())
            rows.append(r)
    with open(out / "ground_truth.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["query", "original", "family", "attack"])
        writer.writeheader()
        writer.writerows(rows)
    (out / "benchmark.json").write_text(json.dumps({"built_on": str(src), "families": list(made), "seed": args.seed,
                                                    "queries": len(rows)}, indent=2))
    print(f"{len(rows)} queries in {out}")


if __name__ == "__main__":
    main()
