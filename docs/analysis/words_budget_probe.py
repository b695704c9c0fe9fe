"""Where a tight crop's original ranks by visual words, and how many words candidates it would take
(issue #15): the fixed 4 nearest, or more for images with few words (Matcher.words_wanted).

Photos the dev benchmark does not use: the last 120 of ``originals`` (sorted, as in the other
probes; a tight crop of each, seeded as there) and distractors 120-269 (the dev set takes the
first 120, the vocabulary was fitted on 300 onwards) as further references; 270 references in all.

    NDID_WEIGHTS_MODE=random .venv/bin/python docs/analysis/words_budget_probe.py ../shared/data docs/words_budget.png
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ndid_tasks import augment
from ndid_tasks.config import Settings
from ndid_tasks.images import LoadedImage, load_image
from ndid_tasks.pipeline import Engine


def loaded(img: Image.Image, name: str) -> LoadedImage:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "PNG")
    return load_image(buf.getvalue(), name)


def main(data: str, png: str | None = None) -> None:
    engine = Engine(Settings(weights_mode="random", state_dir="/tmp/ndid_words_budget_probe"))
    files = sorted(Path(data, "originals").glob("*.jpg"))[-120:] + sorted(Path(data, "distractors").glob("*"))[120:270]
    refs = [Image.open(f).convert("RGB") for f in files]
    ref_feats = engine.geometry.compute([loaded(im, str(i)) for i, im in enumerate(refs)])
    ref_words = [engine.words.from_local(f) for f in ref_feats]
    rng = np.random.default_rng(7)
    crops = [augment.attack_tight_crop(p, rng) for p in refs[:120]]
    feats = engine.geometry.compute([loaded(im, "q") for im in crops])
    words = [engine.words.from_local(f) for f in feats]

    def sim(a: dict, b: dict) -> float:
        return sum(v * b.get(k, 0.0) for k, v in a.items()) if a and b else 0.0

    ranks, inliers = [], []
    for i, w in enumerate(words):
        s = np.array([sim(w, r) for r in ref_words])
        ranks.append(int((s > s[i]).sum()) + 1 if w else 10**6)
        inliers.append(engine.geometry.verify_many(feats[i], [ref_feats[i]])[0])  # no closer look
    rank, inl = np.array(ranks), np.array(inliers)
    kp = np.array([len(f) for f in feats])
    nnz = np.array([len(w) for w in words])
    ref_nnz = np.array([len(w) for w in ref_words])
    print(f"{len(refs)} references, {len(crops)} tight crops ({(kp >= 10).sum()} with >= 10 keypoints); "
          f"words per crop p10/50/90 {np.percentile(nnz, [10, 50, 90])}, per reference {np.percentile(ref_nnz, [10, 50, 90])}")
    fixed, scaled = [], []
    for k in (1, 2, 4, 8, 16):
        fixed.append((k, (rank <= k).mean()))
        print(f"fixed {k:2d}: words recall {(rank <= k).mean():.3f}; and >= 12 inliers {((rank <= k) & (inl >= 12)).mean():.3f}")
    full = engine.settings.sift_features // 2
    for cap in (8, 12, 16):
        want = np.clip(np.round(4 * full / np.maximum(nnz, 1)), 4, cap)
        ref_want = np.clip(np.round(4 * full / np.maximum(ref_nnz, 1)), 4, cap)
        scaled.append((ref_want.mean(), (rank <= want).mean(), cap))
        print(f"4 x {full} / words, at most {cap:2d}: words recall {(rank <= want).mean():.3f}; and >= 12 inliers "
              f"{((rank <= want) & (inl >= 12)).mean():.3f}; crops {want.mean():.1f} candidates, references "
              f"{ref_want.mean():.2f} ({(ref_want > 4).mean():.1%} above 4)")
    if png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 4))
        ax.plot([k for k, _ in fixed], [r for _, r in fixed], "o-", label="the same k for every image")
        ax.plot([c for c, _, _ in scaled], [r for _, r, _ in scaled], "s", color="C3",
                label=f"4 x {full} / the image's words, at most 8 / 12 / 16")
        for c, r, cap in scaled:
            ax.annotate(str(cap), (c, r), textcoords="offset points", xytext=(6, -10), fontsize=8, color="C3")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("words candidates per whole photo (each one verified)")
        ax.set_ylabel("tight crops: original among the words candidates")
        ax.set_title(f"Words candidates vs verification cost ({len(crops)} tight crops, {len(refs)} references)",
                     fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
