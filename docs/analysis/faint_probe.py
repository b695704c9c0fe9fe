"""Inliers of tight crops and of negative pairs with and without the faint look (issue #15): a pair
with a faint side (fewer than ``GeometricSignal.faint_below`` keypoints at SIFT's default contrast
threshold) that is not verified is matched again with both pictures described at
``faint_contrast`` (GeometricSignal.faint_look).

Photos the dev benchmark does not use (the last 120 of ``originals``, sorted, with the crops and
same-scene pairs of closer_look_probe.py); the shipped SIFT settings otherwise, the closer look
on. Pairs: each tight crop against its photo, against the next photo (unrelated), and against the
next photo's tight crop (two small, often faint pictures: where spurious matches would show), and
the same-scene pairs. Tight crops are split by their keypoints at the default contrast.

    .venv/bin/python docs/analysis/faint_probe.py ../shared/data/originals docs/faint_look.png
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ndid_tasks import augment
from ndid_tasks.config import Settings
from ndid_tasks.images import load_image
from ndid_tasks.signals.geometry import GeometricSignal

VARIANTS = [(0, 0.04), (25, 0.01), (50, 0.02), (50, 0.01), (100, 0.01)]  # (faint_below, faint_contrast)


def encoded(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def main(folder: str, png: str | None = None) -> None:
    settings = Settings()
    files = sorted(Path(folder).glob("*.jpg"))[-120:]
    photos = [Image.open(f).convert("RGB") for f in files]
    rng = np.random.default_rng(7)  # the crops and same-scene pairs of closer_look_probe.py
    crops, scenes = [], []
    for photo in photos:
        crops.append(augment.attack_tight_crop(photo, rng))
        scenes.append(augment.same_scene_pair(photo, rng))
    n = len(photos)
    pairs = {"tight_crop": [(crops[i], photos[i]) for i in range(n)],
             "same_scene": [(scenes[i][1], scenes[i][0]) for i in range(n)],
             "unrelated": [(crops[i], photos[(i + 1) % n]) for i in range(n)],
             "crop_vs_crop": [(crops[i], crops[(i + 1) % n]) for i in range(n)]}
    plain = GeometricSignal.from_settings(settings)
    plain.faint_below = 0
    default_kp = np.array([len(f) for f in plain.compute([load_image(encoded(c), "c") for c in crops])])
    groups = {"< 10 kp": default_kp < 10, "10-49 kp": (default_kp >= 10) & (default_kp < 50),
              ">= 50 kp": default_kp >= 50}
    print(f"{n} tight crops: {', '.join(f'{k} {v.sum()}' for k, v in groups.items())}")
    found: dict[tuple[int, float], dict[str, np.ndarray]] = {}
    for below, contrast in VARIANTS:
        geometry = GeometricSignal.from_settings(settings)
        geometry.faint_below, geometry.faint_contrast = below, contrast
        row = {}
        for kind, kind_pairs in pairs.items():
            counts = []
            for query, ref in kind_pairs:
                q_data, r_data = encoded(query), encoded(ref)
                q, r = geometry.compute([load_image(q_data, "q"), load_image(r_data, "r")])
                full = {None: load_image(q_data, "q", working_size=settings.closer_look_side).image,
                        0: load_image(r_data, "r", working_size=settings.closer_look_side).image}
                counts.append(int(geometry.verify(q, r, (full[None], full[0]))))
            row[kind] = np.array(counts)
        found[(below, contrast)] = row
        t = row["tight_crop"] >= GeometricSignal.verified
        split = ", ".join(f"{k} {t[m].mean():.2f}" for k, m in groups.items())
        negatives = np.concatenate([row["unrelated"], row["crop_vs_crop"]])
        print(f"faint below {below:3d} at {contrast:.2f}: tight crops >= 12 inliers {t.mean():.3f} ({split}); "
              f"same-scene >= 12 {(row['same_scene'] >= 12).mean():.3f}, max {row['same_scene'].max()}; "
              f"unrelated + crop vs crop max {negatives.max()}, >= 7: {(negatives >= 7).sum()}", flush=True)
    if png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 4))
        names = [f"{b} @ {c:.2f}" if b else "off" for b, c in VARIANTS]
        for k, (label, mask) in enumerate(groups.items()):
            ax.bar(np.arange(len(VARIANTS)) + (k - 1) * 0.27, [(found[v]["tight_crop"][mask] >= 12).mean()
                                                              for v in VARIANTS], 0.27, label=f"{label} ({mask.sum()})")
        ax.set_xticks(np.arange(len(VARIANTS)), names)
        ax.set_xlabel("faint below (keypoints at the default contrast) @ faint contrast threshold")
        ax.set_ylabel("share verified (>= 12 distinct inliers)")
        worst = max(max(found[v]["unrelated"].max(), found[v]["crop_vs_crop"].max()) for v in VARIANTS)
        ax.set_title(f"The faint look: {n} tight crops of photos outside the dev set\n"
                     f"(unrelated and crop-vs-crop pairs: at most {worst} inliers in every variant)", fontsize=9)
        ax.set_ylim(0, 1.3)
        ax.legend(fontsize=8, loc="upper left", ncol=3, title="tight crops by keypoints", title_fontsize=8)
        ax.grid(alpha=0.3, axis="y")
        fig.tight_layout()
        fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
